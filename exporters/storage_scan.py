"""The storage scan: attribute every byte of Moodle's file pool to a bucket.

One read-only REPEATABLE READ transaction (one snapshot for every query) as the
read-only role. The database does only a sequential read of mdl_files (no join,
no sort), streamed as a binary COPY of three fixed-width columns; the small
context -> bucket map is a second query. numpy does the rest on whole arrays:
parse the rows a few MB at a time, map contexts to buckets, sort by hash (first
64 bits, equal prefixes checked on the full hash: exact), then per content and
per bucket files, logical, unique, exclusive and apportioned bytes in integers.
The distinct hashes come out in order, for the merge with the sorted filedir
walk. Memory grows with the rows (~160 MB peak at 2.5M rows, bench/README.md).

Attribution (verified against Moodle 4.1 accesslib build_paths): a context's
path is /1/<depth-2 context>/...; the depth-2 context is the top-level course
category for everything in a school (subcategories, courses, modules, blocks,
question banks, the category recycle bin), a user context for user files, and
the front-page course or a site block otherwise. Paths are joined at query
time because moving a course rewrites them."""

from __future__ import annotations

import binascii
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
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

from moodleops import membership, moodledb

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
    # No join and no ORDER BY: the server only reads mdl_files sequentially; the context ->
    # bucket map and the sort by content are done in numpy (bench/storage_scan.py: a join
    # made the planner pick 3-5x slower plans; sorting in numpy is faster than the
    # server's sort and keeps that work off the Moodle database). Binary COPY: every row
    # has the same width, so whole blocks are parsed at once without a loop per row.
    return f"""
COPY (
  SELECT contenthash::text,
         filesize::bigint,
         (CASE WHEN component = 'user' AND filearea = 'draft' THEN {_K_DRAFT} ELSE contextid END)::bigint
    FROM {p}files
   WHERE filesize > 0
) TO STDOUT (FORMAT binary)"""


def connect(cfg: ScanConfig) -> psycopg.Connection[Any]:
    db = cfg.db
    target = moodledb.Target(host=db.host, port=db.port, dbname=db.dbname, user=db.user,
                             password=db.password, prefix=db.prefix)
    try:
        # No statement timeout: a full scan of mdl_files at production scale is one long COPY.
        return moodledb.open_readonly(target, application="moodleops-storage", dict_rows=False,
                                      connect_timeout_s=cfg.connect_timeout_s, statement_timeout_s=None)
    except moodledb.MoodleDBError as exc:
        raise ScanError(f"cannot connect to {db.describe()}: {_oneline(exc)}") from exc


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# Binary COPY (PostgreSQL docs, "COPY ... File Formats"): a 19-byte header (signature, flags,
# header-extension length), then per row an int16 field count and, per field, an int32
# length and the bytes; a trailer int16 -1. Our rows: a 40-char hash and two bigints.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_ROW = np.dtype([("n", ">i2"), ("hl", ">i4"), ("h", "S40"), ("sl", ">i4"), ("s", ">i8"),
                 ("kl", ">i4"), ("k", ">i8")])
_HASH20 = np.dtype([("a", ">u8"), ("b", ">u8"), ("c", ">u4")])   # sha1 as three big-endian integers
_HEX = b"0123456789abcdef"
_CHUNK_BYTES = 4 << 20      # raw COPY data parsed at once


@dataclass
class _ContextMap:
    """Context id -> bucket rank, as two sorted arrays (a few hundred thousand contexts)."""

    ids: np.ndarray
    ranks: np.ndarray
    draft: int
    orphan: int

    def ranks_of(self, keys: np.ndarray) -> np.ndarray:
        if len(self.ids) == 0:
            out = np.full(len(keys), self.orphan, dtype=np.int32)
        else:
            pos = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
            out = np.where(self.ids[pos] == keys, self.ranks[pos], np.int32(self.orphan)).astype(np.int32)
        out[keys == _K_DRAFT] = self.draft
        return out


@dataclass
class _Rows:
    """The files rows with content, one entry per row: hash as three integers, size, bucket rank."""

    h0: np.ndarray   # uint64: hash hex digits 0-15
    h1: np.ndarray   # uint64: digits 16-31
    h2: np.ndarray   # uint32: digits 32-39
    size: np.ndarray  # int64
    rank: np.ndarray  # int32


def _parse(data: bytes, ctx_map: _ContextMap) -> tuple[np.ndarray, ...]:
    rec = np.frombuffer(data, dtype=_ROW)
    if not ((rec["n"] == 3).all() and (rec["hl"] == 40).all() and (rec["sl"] == 8).all()
            and (rec["kl"] == 8).all()):
        raise ScanError("unexpected row layout in the binary COPY of mdl_files (contenthash not 40 characters?)")
    hashes = rec["h"].tobytes()
    # A contenthash is a lowercase sha1: the integer form keeps its order and equality only
    # then, so anything else is refused rather than counted wrongly.
    if hashes.translate(None, _HEX):
        raise ScanError("mdl_files has a contenthash that is not 40 lowercase hexadecimal digits")
    h = np.frombuffer(binascii.a2b_hex(hashes), dtype=_HASH20)
    return h["a"], h["b"], h["c"], rec["s"], ctx_map.ranks_of(rec["k"].astype(np.int64))


class _Columns:
    """Growable output columns. Allocated at the estimated row count: pages never
    written are never resident, and no list of chunks is concatenated (which
    doubled the peak)."""

    def __init__(self, capacity: int) -> None:
        self.n = 0
        self.cols = [np.empty(capacity, dtype=t) for t in (np.uint64, np.uint64, np.uint32, np.int64, np.int32)]

    def add(self, parts: tuple[np.ndarray, ...]) -> None:
        m = len(parts[0])
        if self.n + m > len(self.cols[0]):
            grown = max(2 * len(self.cols[0]), self.n + m)
            for i, col in enumerate(self.cols):
                new = np.empty(grown, dtype=col.dtype)
                new[:self.n] = col[:self.n]
                self.cols[i] = new
        for col, part in zip(self.cols, parts, strict=True):
            col[self.n:self.n + m] = part
        self.n += m

    def rows(self) -> _Rows:
        return _Rows(*(col[:self.n] for col in self.cols))


def _read_rows(cur: psycopg.Cursor[Any], sql: str, ctx_map: _ContextMap, estimate: int) -> _Rows:
    """Stream the binary COPY, parsing the fixed-width rows a few MB at a time.

    PostgreSQL sends one message per row; appending each to a bytearray is the only
    per-row Python work (a list of message objects costs twice as much: GC)."""
    out = _Columns(max(estimate, 1024))
    buf = bytearray()
    header = True
    width = _ROW.itemsize
    with cur.copy(sql) as copy:
        for block in copy:
            buf += block
            if len(buf) >= _CHUNK_BYTES:
                if header:
                    _strip_header(buf)
                    header = False
                cut = len(buf) - len(buf) % width
                out.add(_parse(bytes(buf[:cut]), ctx_map))
                del buf[:cut]
    if header:
        _strip_header(buf)
    if buf[-2:] != b"\xff\xff" or (len(buf) - 2) % width:
        raise ScanError("truncated binary COPY of mdl_files")
    out.add(_parse(bytes(buf[:-2]), ctx_map))
    return out.rows()


def _strip_header(buf: bytearray) -> None:
    if len(buf) < 19 or not buf.startswith(_SIGNATURE):
        raise ScanError("unexpected binary COPY header from PostgreSQL")
    del buf[:19 + int.from_bytes(buf[15:19], "big")]


_NONE = np.empty(0, np.int64)   # stands for a released column of _Rows


@dataclass
class _Aggregate:
    files: np.ndarray         # per bucket rank
    logical: np.ndarray
    unique: np.ndarray
    exclusive: np.ndarray
    apportioned: np.ndarray
    blob_size: np.ndarray     # per distinct content: the largest size recorded for it
    inconsistent: int


def _aggregate(rows: _Rows, nbuckets: int, merge: FiledirMerge | None = None) -> _Aggregate:
    """Per bucket: files, logical, unique, exclusive and apportioned bytes, all exact integers;
    the distinct contents, in ascending hash order, go to `merge` (the filedir walk).

    Consumes `rows` (its arrays are released as soon as they are used: memory)."""
    files = np.bincount(rows.rank, minlength=nbuckets).astype(np.int64)
    logical = np.zeros(nbuckets, dtype=np.int64)
    np.add.at(logical, rows.rank, rows.size)
    # Sort by the first 64 bits of the hash; equal prefixes are then checked on the full
    # hash, and a real prefix collision (~1e-6 at 10M contents) falls back to a full sort.
    order = np.argsort(rows.h0)
    h0 = rows.h0[order]
    rows.h0 = _NONE
    h1 = rows.h1[order]
    rows.h1 = _NONE
    h2 = rows.h2[order]
    rows.h2 = _NONE
    size = rows.size[order]
    rows.size = _NONE
    rank = rows.rank[order]
    rows.rank = _NONE
    del order
    same0 = h0[1:] == h0[:-1]
    same = same0 & (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    if not np.array_equal(same, same0):
        fix = np.lexsort((h2, h1, h0))
        h0, h1, h2, size, rank = h0[fix], h1[fix], h2[fix], size[fix], rank[fix]
        del fix
        same = (h0[1:] == h0[:-1]) & (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    del same0
    starts = np.flatnonzero(np.concatenate(([True], ~same))) if len(size) else np.empty(0, np.int64)
    del same
    nblobs = len(starts)
    if nblobs:
        blob_size = np.maximum.reduceat(size, starts)
        inconsistent = int(np.count_nonzero(blob_size != np.minimum.reduceat(size, starts)))
    else:
        blob_size, inconsistent = np.empty(0, np.int64), 0
    if merge is not None:
        # Before the per-bucket stage, so the distinct hashes are not held at its peak.
        for h, bsize in _hex_hashes(h0[starts], h1[starts], h2[starts], blob_size):
            merge.see(h, bsize)
    del h0, h1, h2, size
    # (content, bucket) pairs, sorted by content then bucket rank: the rank order decides
    # who gets the remainder bytes, so results do not depend on row order.
    pairs = np.repeat(np.arange(nblobs, dtype=np.int64) * nbuckets, np.diff(np.append(starts, len(rank))))
    del starts
    pairs += rank
    del rank
    pairs.sort()
    keep = np.empty(len(pairs), dtype=bool)
    if len(pairs):
        keep[0] = True
        np.not_equal(pairs[1:], pairs[:-1], out=keep[1:])
    pairs = pairs[keep]
    del keep
    # int32 wherever the values are bucket counts or ranks: this is the scan's peak.
    pair_rank = (pairs % nbuckets).astype(np.int32)
    pairs //= nbuckets
    pair_blob = pairs
    del pairs
    users = np.bincount(pair_blob, minlength=nblobs)           # buckets using each content
    first = np.cumsum(users) - users                            # index of each content's first pair
    pos = (np.arange(len(pair_blob), dtype=np.int64) - first[pair_blob]).astype(np.int32)
    del first
    k = users.astype(np.int32)[pair_blob]
    del users
    sz = blob_size[pair_blob]
    del pair_blob
    unique = np.zeros(nbuckets, dtype=np.int64)
    exclusive = np.zeros(nbuckets, dtype=np.int64)
    apportioned = np.zeros(nbuckets, dtype=np.int64)
    np.add.at(unique, pair_rank, sz)
    alone = k == 1
    np.add.at(exclusive, pair_rank[alone], sz[alone])
    del alone
    # Integer split, the remainder one byte each to the first buckets in rank order:
    # the shares add up exactly to the content's size.
    extra = (sz % k).astype(np.int32)
    share = sz
    del sz
    share //= k
    del k
    share += pos < extra
    del extra, pos
    np.add.at(apportioned, pair_rank, share)
    return _Aggregate(files, logical, unique, exclusive, apportioned, blob_size, inconsistent)


def _hex_hashes(h0: np.ndarray, h1: np.ndarray, h2: np.ndarray, sizes: np.ndarray) -> Iterator[tuple[str, int]]:
    """(40-char hex hash, size) of each content, from the integer form."""
    step = 65536
    for i in range(0, len(sizes), step):
        raw = np.empty(min(step, len(sizes) - i), dtype=_HASH20)
        raw["a"], raw["b"], raw["c"] = h0[i:i + step], h1[i:i + step], h2[i:i + step]
        text = raw.tobytes().hex()
        for j, size in enumerate(sizes[i:i + step].tolist()):
            yield text[40 * j:40 * j + 40], size


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
        merge = (FiledirMerge(cfg.paths.filedir, cfg.paths.trashdir, started - cfg.orphan_margin_s)
                 if cfg.walk_filedir else None)

        def bucket_of(key: int) -> tuple[str, str]:
            if key in _FIXED:
                return _FIXED[key]
            school = cat_to_school.get(key)
            return (SCHOOL, school) if school else (UNMAPPED, "")

        order_keys = sorted(buckets)          # bucket rank: remainder bytes go in this order
        cur.execute(_ctx_query(p))
        ctx_rows = cur.fetchall()
        rank_of = {k: i for i, k in enumerate(order_keys)}
        ctx_ids = np.fromiter((int(r[0]) for r in ctx_rows), dtype=np.int64, count=len(ctx_rows))
        ctx_rank = np.fromiter((rank_of[bucket_of(int(r[1]))] for r in ctx_rows), dtype=np.int32,
                               count=len(ctx_rows))
        del ctx_rows
        sort = np.argsort(ctx_ids)
        ctx_map = _ContextMap(ctx_ids[sort], ctx_rank[sort], draft=rank_of[_FIXED[_K_DRAFT]],
                              orphan=rank_of[_FIXED[_K_ORPHAN]])
        cur.execute("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                    (f"{p}files",))
        est = cur.fetchone()
        # The planner's row count (directory rows included): usually a little above the
        # rows read, so the columns are allocated once; they grow if it was too low.
        rows = _read_rows(cur, _files_query(p), ctx_map, int(est[0]) if est else 0)
        agg = _aggregate(rows, len(order_keys), merge)
        del rows
        for i, key in enumerate(order_keys):
            b = buckets[key]
            b.files, b.logical_bytes, b.unique_bytes, b.exclusive_bytes, b.apportioned_bytes = (
                int(agg.files[i]), int(agg.logical[i]), int(agg.unique[i]), int(agg.exclusive[i]),
                int(agg.apportioned[i]))
        pool.distinct_blobs = len(agg.blob_size)
        pool.distinct_bytes = int(agg.blob_size.sum())
        inconsistent = agg.inconsistent
        del agg

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
    # Who belongs to a school: the one definition (moodleops.membership), all three methods.
    member_sql, params = membership.members_sql(membership.Rule(pol.method, pol.membership_field), cfg.schools)
    cur.execute(moodledb.q(p, f"""
        SELECT m.school,
               COUNT(*) FILTER (WHERE u.suspended = 0),
               COUNT(*) FILTER (WHERE u.suspended <> 0),
               COUNT(*) FILTER (WHERE u.suspended = 0 AND t.data = ANY(%(hosted)s))
          FROM ({member_sql}) m
          JOIN {{user}} u ON u.id = m.userid
          LEFT JOIN {{user_info_data}} t ON t.userid = u.id AND t.fieldid = %(tfield)s
         GROUP BY m.school"""),
                {**params, "hosted": list(pol.hosted_types), "tfield": type_field if type_field is not None else -1})
    for code, active, suspended, hosted in cur.fetchall():
        accounts[code] = AccountStats(active=int(active), suspended=int(suspended),
                                      hosted_expiring=int(hosted) if type_field is not None else None)
    if type_field is None:
        for a in accounts.values():
            a.hosted_expiring = None
    return accounts, warnings
