"""The storage scan: attribute every byte of Moodle's file pool to a bucket.

One read-only REPEATABLE READ transaction (one snapshot for every query) as the
read-only role. The database does only what it is good at: one sequential
read of mdl_files and one sort by contenthash; each row's context is mapped to
its bucket in Python (the per-context map is one small query). The rows
stream to Python in hash order, so each blob's group of rows is complete when
the next hash starts: unique, exclusive and apportioned bytes are computed in
constant memory, and the same stream is merged with the sorted filedir walk.

Attribution (verified against Moodle 4.1 accesslib build_paths): a context's
path is /1/<depth-2 context>/...; the depth-2 context is the top-level course
category for everything in a school (subcategories, courses, modules, blocks,
question banks, the category recycle bin), a user context for user files, and
the front-page course or a site block otherwise. Paths are joined at query
time because moving a course rewrites them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import psycopg
from moodleops.exporters.filedir import FiledirMerge, dir_size, filesystem_usage
from moodleops.exporters.storage_model import (
    DRAFT,
    ORPHAN_CONTEXT,
    SCHOOL,
    SITE,
    SYSTEM,
    UNMAPPED,
    USERS,
    AccountStats,
    BucketStats,
    CategoryNote,
    PoolStats,
    ScanConfig,
    ScanResult,
)

# Bucket keys computed in SQL; positive keys are top-level category ids.
_K_USERS, _K_SYSTEM, _K_ORPHAN, _K_SITE, _K_DRAFT = 0, -1, -2, -3, -4
_FIXED = {_K_USERS: (USERS, ""), _K_SYSTEM: (SYSTEM, ""), _K_ORPHAN: (ORPHAN_CONTEXT, ""),
          _K_SITE: (SITE, ""), _K_DRAFT: (DRAFT, "")}


class ScanError(RuntimeError):
    """The scan could not complete (database unreachable, timeout...): one clear line."""


def _ctx_query(p: str) -> str:
    """Every context's bucket key (a few hundred thousand rows at most)."""
    return f"""
SELECT ctx.id,
       CASE WHEN ctx.contextlevel = 10 THEN {_K_SYSTEM}
            WHEN top.contextlevel = 40 THEN top.instanceid
            WHEN top.contextlevel = 30 THEN {_K_USERS}
            ELSE {_K_SITE} END
  FROM {p}context ctx
  LEFT JOIN {p}context top ON top.id = NULLIF(split_part(ctx.path, '/', 3), '')::bigint"""


def _files_query(p: str) -> str:
    # No join here: the context -> bucket map is applied in Python (a dict lookup per
    # distinct key). Joined in SQL, the planner cannot estimate the map and picked a merge
    # join over an index scan of mdl_files or hashed mdl_files itself: 2.5-5 s instead of
    # ~1 s for this scan + sort at 2.5M rows (bench/storage_scan.py).
    # COLLATE "C": byte order, which is also Python's str order and the filedir
    # walk's order; and much cheaper to sort than a linguistic collation.
    return f"""
COPY (
  SELECT contenthash COLLATE "C",
         filesize,
         CASE WHEN component = 'user' AND filearea = 'draft' THEN {_K_DRAFT} ELSE contextid END
    FROM {p}files
   WHERE filesize > 0
   ORDER BY 1
) TO STDOUT"""


def connect(cfg: ScanConfig) -> psycopg.Connection[Any]:
    db = cfg.db
    try:
        conn = psycopg.connect(host=db.host, port=db.port, dbname=db.dbname, user=db.user,
                               password=db.password, connect_timeout=cfg.connect_timeout_s,
                               application_name="moodleops-storage")
    except psycopg.Error as exc:
        raise ScanError(f"cannot connect to {db.describe()}: {_oneline(exc)}") from exc
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _copy_lines(cur: psycopg.Cursor[Any], sql: str) -> Iterator[bytes]:
    """The lines of a COPY TO STDOUT, parsed from raw blocks (much faster than copy.rows())."""
    with cur.copy(sql) as copy:
        rest = b""
        for block in copy:
            data = rest + bytes(block)
            lines = data.split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest


def scan(cfg: ScanConfig, conn: psycopg.Connection[Any] | None = None, *,
         today: date | None = None) -> ScanResult:
    """Run a full scan. With `conn`, use that connection's current transaction
    (tests share a snapshot this way); otherwise open and close one."""
    own = conn is None
    started = time.time()
    t0 = time.monotonic()
    try:
        if conn is None:
            conn = connect(cfg)
        try:
            if own:
                with conn.transaction():
                    result = _scan_in_snapshot(cfg, conn, started, today or date.today())
            else:
                result = _scan_in_snapshot(cfg, conn, started, today or date.today())
        finally:
            if own:
                conn.close()
    except psycopg.Error as exc:
        raise ScanError(f"storage scan of {cfg.db.describe()} failed: {_oneline(exc)}") from exc
    result.duration_s = time.monotonic() - t0
    return result


def _scan_in_snapshot(cfg: ScanConfig, conn: psycopg.Connection[Any], started: float,
                      today: date) -> ScanResult:
    p = cfg.db.prefix
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, true), set_config('work_mem', %s, true)",
                    (f"{int(cfg.statement_timeout_s * 1000)}", cfg.work_mem))
        cur.execute(f"SELECT id, COALESCE(idnumber, ''), name FROM {p}course_categories WHERE parent = 0")
        top = [CategoryNote(int(r[0]), str(r[1]), str(r[2])) for r in cur.fetchall()]
        by_idnumber = {c.idnumber: c for c in top if c.idnumber}
        cat_to_school: dict[int, str] = {}
        missing: list[str] = []
        for s in cfg.schools:
            cat = by_idnumber.get(s.category_idnumber)
            if cat is None:
                missing.append(s.code)
            else:
                cat_to_school[cat.id] = s.code
        unmapped = [c for c in top if c.id not in cat_to_school]

        buckets: dict[tuple[str, str], BucketStats] = {(SCHOOL, s.code): BucketStats() for s in cfg.schools}
        for fixed in (*_FIXED.values(), (UNMAPPED, "")):
            buckets[fixed] = BucketStats()
        pool = PoolStats(pool_bytes=cfg.pool_bytes)
        rank = {id(b): i for i, (_, b) in enumerate(sorted(buckets.items()))}
        merge = (FiledirMerge(cfg.paths.filedir, cfg.paths.trashdir, started - cfg.orphan_margin_s)
                 if cfg.walk_filedir else None)

        def bucket_of(key: int) -> tuple[str, str]:
            if key in _FIXED:
                return _FIXED[key]
            school = cat_to_school.get(key)
            return (SCHOOL, school) if school else (UNMAPPED, "")

        cur.execute(_ctx_query(p))
        ctx_bucket: dict[int, int] = {int(cid): int(key) for cid, key in cur.fetchall()}

        def stats_of(key_s: bytes) -> BucketStats:
            """The bucket of a files row: the draft marker, or its context's bucket."""
            k = int(key_s)
            if k != _K_DRAFT:
                k = ctx_bucket.get(k, _K_ORPHAN)
            return buckets[bucket_of(k)]

        key_cache: dict[bytes, BucketStats] = {}
        inconsistent = 0
        current: bytes = b""
        size_max = 0
        size_min = 0
        members: list[BucketStats] = []

        def close_group() -> None:
            nonlocal inconsistent
            n = len(members)
            share, extra = divmod(size_max, n)
            # Integer split, the remainder byte by byte: the shares add up exactly.
            # Remainder bytes go in bucket order, not row order, so results are reproducible.
            ordered = sorted(members, key=lambda m: rank[id(m)]) if extra and n > 1 else members
            for i, b in enumerate(ordered):
                b.unique_bytes += size_max
                b.apportioned_bytes += share + (1 if i < extra else 0)
            if n == 1:
                members[0].exclusive_bytes += size_max
            pool.distinct_blobs += 1
            pool.distinct_bytes += size_max
            if size_min != size_max:
                inconsistent += 1
            if merge is not None:
                merge.see(current.decode(), size_max)

        for line in _copy_lines(cur, _files_query(p)):
            h, sz_s, key_s = line.split(b"\t")
            sz = int(sz_s)
            b = key_cache.get(key_s)
            if b is None:
                b = key_cache[key_s] = stats_of(key_s)
            b.files += 1
            b.logical_bytes += sz
            if h != current:
                if members:
                    close_group()
                current, size_max, size_min, members = h, sz, sz, [b]
                continue
            size_max = max(size_max, sz)
            size_min = min(size_min, sz)
            # A handful of buckets per blob at most: a list beats a set. Identity,
            # not ==: two buckets may hold equal numbers.
            for m in members:
                if m is b:
                    break
            else:
                members.append(b)
        if members:
            close_group()

        accounts, warnings = _accounts(cfg, cur)

    if merge is not None:
        pool.filedir = merge.finish()
    fs = filesystem_usage(cfg.paths.dataroot)
    if fs is not None:
        pool.fs_capacity_bytes, pool.fs_used_bytes, pool.fs_available_bytes = fs
    else:
        warnings.append(f"{cfg.paths.dataroot}: cannot read filesystem usage")
    pool.dir_bytes = {name: dir_size(path) for name, path in cfg.paths.side_dirs().items()}
    if missing:
        warnings.append("no top-level category in Moodle for school(s) "
                        + ", ".join(f"{c} ({s.category_idnumber})" for c in missing
                                    for s in cfg.schools if s.code == c))
    if unmapped:
        warnings.append("top-level categories claimed by no school (counted as unmapped): "
                        + ", ".join(f"id {c.id} idnumber {c.idnumber or '(none)'!r}" for c in unmapped))
    return ScanResult(started_at=started, duration_s=0.0, buckets=buckets, pool=pool, accounts=accounts,
                      hosted_expiry=cfg.accounts.next_expiry(today), unmapped_categories=unmapped,
                      missing_schools=missing, inconsistent_hashes=inconsistent, warnings=warnings)


def _accounts(cfg: ScanConfig, cur: psycopg.Cursor[Any]) -> tuple[dict[str, AccountStats], list[str]]:
    """Active, suspended and hosted (expiring at the next 31 August) accounts per school."""
    p = cfg.db.prefix
    pol = cfg.accounts
    warnings: list[str] = []
    accounts = {s.code: AccountStats() for s in cfg.schools}
    cur.execute(f"SELECT id FROM {p}user_info_field WHERE shortname = %s", (pol.type_field,))
    row = cur.fetchone()
    type_field = int(row[0]) if row else None
    if type_field is None:
        warnings.append(f"profile field {pol.type_field!r} (accounts.account_type_field) does not exist "
                        "in Moodle: hosted accounts are not counted")
    if pol.method == "cohort":
        keys = {s.cohort_idnumber: s.code for s in cfg.schools}
        member_sql = (f"SELECT c.idnumber AS k, cm.userid FROM {p}cohort c "
                      f"JOIN {p}cohort_members cm ON cm.cohortid = c.id WHERE c.idnumber = ANY(%(keys)s)")
    elif pol.method == "profile_field":
        keys = {s.code: s.code for s in cfg.schools}
        member_sql = (f"SELECT d.data AS k, d.userid FROM {p}user_info_data d "
                      f"JOIN {p}user_info_field fl ON fl.id = d.fieldid AND fl.shortname = %(mfield)s "
                      "WHERE d.data = ANY(%(keys)s)")
    else:
        warnings.append(f"school_membership.method {pol.method!r} is not supported by the storage "
                        "exporter (cohort, profile_field): accounts are not counted")
        return accounts, warnings
    cur.execute(f"""
        SELECT m.k,
               COUNT(*) FILTER (WHERE u.suspended = 0),
               COUNT(*) FILTER (WHERE u.suspended <> 0),
               COUNT(*) FILTER (WHERE u.suspended = 0 AND t.data = ANY(%(hosted)s))
          FROM ({member_sql}) m
          JOIN {p}user u ON u.id = m.userid AND u.deleted = 0
          LEFT JOIN {p}user_info_data t ON t.userid = u.id AND t.fieldid = %(tfield)s
         GROUP BY m.k""",
                {"keys": list(keys), "mfield": pol.membership_field, "hosted": list(pol.hosted_types),
                 "tfield": type_field if type_field is not None else -1})
    for k, active, suspended, hosted in cur.fetchall():
        code = keys[str(k)]
        accounts[code] = AccountStats(active=int(active), suspended=int(suspended),
                                      hosted_expiring=int(hosted) if type_field is not None else None)
    if type_field is None:
        for a in accounts.values():
            a.hosted_expiring = None
    return accounts, warnings
