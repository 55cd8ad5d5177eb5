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
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from moodleops.exporters.storage_model import (
    DRAFT,
    ORPHAN_CONTEXT,
    SCHOOL,
    SITE,
    SYSTEM,
    UNMAPPED,
    USERS,
    AccountStats,
    BackupFile,
    BucketStats,
    CategoryNote,
    CategoryProblem,
    PoolStats,
    ScanConfig,
    ScanResult,
)

from moodleops import membership, moodledb

# Bucket keys computed in SQL; positive keys are top-level category ids.
_K_USERS, _K_SYSTEM, _K_ORPHAN, _K_SITE, _K_DRAFT = 0, -1, -2, -3, -4
# A course backup in a user's backup area: key _K_BACKUP - <course id> (from its file name).
_K_BACKUP = -(10**15)
#: sha1 of nothing: directory rows, and aliases to external repositories (with a filesize).
EMPTY_HASH = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
# Moodle's backup file names (backup_plan_dbops::get_default_backup_filename):
# <word>-moodle2-course-<course id>-...mbz, <word> = get_string('backupfilename'), localised.
_BACKUP_NAME_SQL = "^[^-]+-moodle2-course-([0-9]{1,12})-"
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
            ELSE {_K_SITE} END,
       CASE WHEN ctx.contextlevel = 50 THEN ctx.instanceid ELSE 0 END
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
         (CASE WHEN component = 'user' AND filearea = 'draft' THEN {_K_DRAFT}
               WHEN component = 'user' AND filearea = 'backup' AND filename ~ '{_BACKUP_NAME_SQL}'
               THEN {_K_BACKUP} - substring(filename from '{_BACKUP_NAME_SQL}')::bigint
               ELSE contextid END)::bigint
    FROM {p}files
   WHERE filesize > 0 AND contenthash <> '{EMPTY_HASH}'
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
    users: int
    course_ids: np.ndarray     # sorted course ids and the rank of each course's context
    course_ranks: np.ndarray

    @staticmethod
    def _lookup(ids: np.ndarray, ranks: np.ndarray, keys: np.ndarray, default: int) -> np.ndarray:
        if len(ids) == 0:
            return np.full(len(keys), default, dtype=np.int32)
        pos = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
        return np.where(ids[pos] == keys, ranks[pos], np.int32(default)).astype(np.int32)

    def ranks_of(self, keys: np.ndarray) -> np.ndarray:
        out = self._lookup(self.ids, self.ranks, keys, self.orphan)
        out[keys == _K_DRAFT] = self.draft
        backup = keys <= _K_BACKUP
        if backup.any():
            # The backed-up course's bucket; a course that is gone leaves it with the user.
            out[backup] = self._lookup(self.course_ids, self.course_ranks, _K_BACKUP - keys[backup], self.users)
        return out

    def course_rank(self, course_id: int) -> int | None:
        got = self._lookup(self.course_ids, self.course_ranks, np.array([course_id], dtype=np.int64), -1)
        return None if int(got[0]) < 0 else int(got[0])


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


_SPILL = np.dtype([("a", "<u8"), ("b", "<u8"), ("c", "<u4"), ("s", "<i8"), ("r", "<i4")])
# Rows per partition aimed at: the per-partition arrays (and the sort's copies) stay
# tens of MB whatever the table's size.
_PARTITION_ROWS = 600_000


class _Spill:
    """The parsed rows, split by the top bits of their hash into partition files in a
    temporary directory: each partition holds whole contents (every row of a hash is
    in the same one) and the partitions come in hash order, so each is aggregated on
    its own and memory no longer grows with the table (10M rows: bench/README.md)."""

    def __init__(self, workdir: Path, estimate: int) -> None:
        bits = 0
        while (estimate >> bits) > _PARTITION_ROWS and bits < 8:
            bits += 1
        self.bits = bits
        self.n = 1 << bits
        self._paths = [workdir / f"rows.{i:03d}" for i in range(self.n)]
        self._files = [open(p, "wb") for p in self._paths]   # noqa: SIM115 - closed in partitions()

    def add(self, parts: tuple[np.ndarray, ...]) -> None:
        h0, h1, h2, size, rank = parts
        rec = np.empty(len(h0), dtype=_SPILL)
        rec["a"], rec["b"], rec["c"], rec["s"], rec["r"] = h0, h1, h2, size, rank
        if self.n == 1:
            rec.tofile(self._files[0])
            return
        pid = (h0 >> np.uint64(64 - self.bits)).astype(np.int64)
        order = np.argsort(pid, kind="stable")
        rec = rec[order]
        bounds = np.searchsorted(pid[order], np.arange(self.n + 1))
        for i in range(self.n):
            if bounds[i + 1] > bounds[i]:
                rec[bounds[i]:bounds[i + 1]].tofile(self._files[i])

    def partitions(self) -> Iterator[_Rows]:
        """Each partition's rows, in hash-prefix order; its file is removed once read."""
        for f in self._files:
            f.close()
        for path in self._paths:
            rec = np.fromfile(path, dtype=_SPILL)
            path.unlink()
            rows = _Rows(rec["a"].copy(), rec["b"].copy(), rec["c"].copy(), rec["s"].copy(), rec["r"].copy())
            del rec
            yield rows

    def close(self) -> None:
        for f in self._files:
            f.close()
        for path in self._paths:
            path.unlink(missing_ok=True)


def _read_rows(cur: psycopg.Cursor[Any], sql: str, ctx_map: _ContextMap, out: _Columns | _Spill) -> None:
    """Stream the binary COPY, parsing the fixed-width rows a few MB at a time into `out`.

    PostgreSQL sends one message per row; appending each to a bytearray is the only
    per-row Python work (a list of message objects costs twice as much: GC)."""
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


Contents = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def _aggregate(rows: _Rows, nbuckets: int, contents: Contents | None = None, draft: int = -1) -> _Aggregate:
    """Per bucket: files, logical, unique, exclusive and apportioned bytes, all exact integers;
    the distinct contents (hash as three integers, size), in ascending hash order, go to
    `contents` (kept for the filedir walk). `draft` is the draft bucket's rank: drafts are
    transient copies, never an owner of a content another bucket uses (docs/storage.md).

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
    if contents is not None:
        # Before the per-bucket stage, so the distinct hashes are not held at its peak.
        contents(h0[starts], h1[starts], h2[starts], blob_size)
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
    unique = np.zeros(nbuckets, dtype=np.int64)
    np.add.at(unique, pair_rank, blob_size[pair_blob])
    if draft >= 0:
        # A draft pair counts as an owner only when no other bucket uses the content.
        is_draft = pair_rank == draft
        if is_draft.any():
            owners = np.bincount(pair_blob[~is_draft], minlength=nblobs)
            owned = ~is_draft
            owned |= owners[pair_blob] == 0
            del owners, is_draft
            pair_blob, pair_rank = pair_blob[owned], pair_rank[owned]
            del owned
    users = np.bincount(pair_blob, minlength=nblobs)           # owners of each content
    first = np.cumsum(users) - users                            # index of each content's first pair
    pos = (np.arange(len(pair_blob), dtype=np.int64) - first[pair_blob]).astype(np.int32)
    del first
    k = users.astype(np.int32)[pair_blob]
    del users
    sz = blob_size[pair_blob]
    del pair_blob
    exclusive = np.zeros(nbuckets, dtype=np.int64)
    apportioned = np.zeros(nbuckets, dtype=np.int64)
    alone = k == 1
    np.add.at(exclusive, pair_rank[alone], sz[alone])
    del alone
    # Integer split, the remainder one byte each to the first owners in rank order:
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


_CONTENT = np.dtype([("a", ">u8"), ("b", ">u8"), ("c", ">u4"), ("s", "<i8")])


class ContentsFile:
    """The distinct contents (hash, size) in ascending hash order, written to a temporary
    file during the snapshot and read back by the filedir walk after it closed: the walk
    holds no transaction, and the hashes are never all in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def write(self, h0: np.ndarray, h1: np.ndarray, h2: np.ndarray, size: np.ndarray) -> None:
        step = 1 << 20
        with open(self.path, "ab") as out:
            for i in range(0, len(size), step):
                rec = np.empty(min(step, len(size) - i), dtype=_CONTENT)
                rec["a"], rec["b"], rec["c"], rec["s"] = h0[i:i + step], h1[i:i + step], h2[i:i + step], size[i:i + step]
                rec.tofile(out)
        self.count += len(size)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        step = 65536
        with open(self.path, "rb") as src:
            while True:
                rec = np.fromfile(src, dtype=_CONTENT, count=step)
                if not len(rec):
                    return
                raw = np.empty(len(rec), dtype=_HASH20)
                raw["a"], raw["b"], raw["c"] = rec["a"], rec["b"], rec["c"]
                text = raw.tobytes().hex()
                for j, size in enumerate(rec["s"].tolist()):
                    yield text[40 * j:40 * j + 40], size


@dataclass
class DbSnapshot:
    """What the database part of a scan leaves for the disk part."""

    result: ScanResult
    course_school: dict[int, str]          # course id -> school code (automated backups)
    auto_backup_dir: Path | None           # Moodle's automated backup directory, if outside the areas
    contents: ContentsFile | None


def scan(cfg: ScanConfig, conn: psycopg.Connection[Any] | None = None, *,
         today: date | None = None) -> ScanResult:
    """A full scan, database then disk, in this process (tests, `storage report`).
    With `conn`, use that connection's current transaction (tests share a snapshot)."""
    from moodleops.exporters.filedir import WalkProgress
    from moodleops.exporters.storage_disk import read_disk

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moodleops-scan-") as tmp:
        snap = read_database(cfg, conn, today=today, workdir=Path(tmp))
        read_disk(cfg, snap, WalkProgress())
    snap.result.duration_s = time.monotonic() - t0
    return snap.result


def read_database(cfg: ScanConfig, conn: psycopg.Connection[Any] | None = None, *,
                  today: date | None = None, workdir: Path | None = None) -> DbSnapshot:
    """The database part: every figure Moodle's tables give, in one snapshot; the
    transaction is closed when this returns (unless `conn` was given). With
    `workdir` and cfg.walk_filedir, the distinct contents are kept there for the walk."""
    own = conn is None
    started = time.time()
    t0 = time.monotonic()
    contents = ContentsFile(workdir / "contents.bin") if workdir is not None and cfg.walk_filedir else None
    try:
        if conn is None:
            conn = connect(cfg)
        try:
            if own:
                with conn.transaction():
                    snap = _scan_in_snapshot(cfg, conn, started, today or date.today(), contents, workdir)
            else:
                snap = _scan_in_snapshot(cfg, conn, started, today or date.today(), contents, workdir)
        finally:
            if own:
                conn.close()
    except psycopg.Error as exc:
        raise ScanError(f"storage scan of {cfg.db.describe()} failed: {_oneline(exc)}") from exc
    snap.result.db_duration_s = snap.result.duration_s = time.monotonic() - t0
    return snap


@dataclass
class _Categories:
    cat_to_school: dict[int, str]          # school category id (top-level or moved) -> code
    moved: list[tuple[int, str]]           # (category id, category context path), shallowest first
    unmapped: list[CategoryNote]
    missing: list[str]
    problems: list[CategoryProblem]


def _categories(cfg: ScanConfig, cur: psycopg.Cursor[Any]) -> _Categories:
    """Each school's category, found by idnumber wherever it is: missing, moved under
    another category and renamed (inventory name) are problems named in the report."""
    p = cfg.db.prefix
    wanted = [s.category_idnumber for s in cfg.schools]
    cur.execute(f"""SELECT cc.id, COALESCE(cc.idnumber, ''), cc.name, cc.parent, cc.path, cc.depth, ctx.path
                      FROM {p}course_categories cc
                      LEFT JOIN {p}context ctx ON ctx.contextlevel = 40 AND ctx.instanceid = cc.id
                     WHERE cc.parent = 0 OR cc.idnumber = ANY(%s)""", (wanted,))
    rows = cur.fetchall()
    names = {int(r[0]): str(r[2]) for r in rows}
    by_idnumber = {str(r[1]): r for r in rows if r[1]}
    top = [CategoryNote(int(r[0]), str(r[1]), str(r[2])) for r in rows if int(r[3]) == 0]
    out = _Categories({}, [], [], [], [])
    moved: list[tuple[int, int, str]] = []
    for s in cfg.schools:
        r = by_idnumber.get(s.category_idnumber)
        if r is None:
            out.missing.append(s.code)
            hint = next((c for c in top if s.name and c.name == s.name), None)
            out.problems.append(CategoryProblem(s.code, "missing", (
                f"school {s.code}: no category with idnumber {s.category_idnumber!r} in Moodle"
                + (f" (top-level category {hint.name!r}, id {hint.id}, has idnumber {hint.idnumber!r}:"
                   " idnumber changed?)" if hint else ""))))
            continue
        cid, name, parent, depth = int(r[0]), str(r[2]), int(r[3]), int(r[5])
        out.cat_to_school[cid] = s.code
        if parent != 0:
            moved.append((depth, cid, str(r[6] or "")))
            path_ids = [int(x) for x in str(r[4]).strip("/").split("/") if x]
            if parent not in names:
                cur.execute(f"SELECT id, name FROM {p}course_categories WHERE id = ANY(%s)", (path_ids,))
                names.update({int(a): str(b) for a, b in cur.fetchall()})
            out.problems.append(CategoryProblem(s.code, "moved", (
                f"school {s.code}: category {name!r} (id {cid}) is not top-level, it is under "
                f"{' / '.join(repr(names.get(i, str(i))) for i in path_ids[:-1])}; its files are still "
                f"counted as {s.code}'s")))
        if s.name and name != s.name:
            out.problems.append(CategoryProblem(s.code, "renamed", (
                f"school {s.code}: category id {cid} is named {name!r} in Moodle, {s.name!r} in the inventory")))
    out.moved = [(cid, path) for _, cid, path in sorted(moved)]
    out.unmapped = [c for c in top if c.id not in out.cat_to_school]
    return out


def _scan_in_snapshot(cfg: ScanConfig, conn: psycopg.Connection[Any], started: float,
                      today: date, contents: ContentsFile | None, workdir: Path | None) -> DbSnapshot:
    p = cfg.db.prefix
    warnings: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, true), set_config('work_mem', %s, true)",
                    (f"{int(cfg.statement_timeout_s * 1000)}", cfg.work_mem))
        cats = _categories(cfg, cur)

        buckets: dict[tuple[str, str], BucketStats] = {(SCHOOL, s.code): BucketStats() for s in cfg.schools}
        for fixed in (*_FIXED.values(), (UNMAPPED, "")):
            buckets[fixed] = BucketStats()
        pool = PoolStats(pool_bytes=cfg.pool_bytes)

        def bucket_of(key: int) -> tuple[str, str]:
            if key in _FIXED:
                return _FIXED[key]
            school = cats.cat_to_school.get(key)
            return (SCHOOL, school) if school else (UNMAPPED, "")

        order_keys = sorted(buckets)          # bucket rank: remainder bytes go in this order
        rank_of = {k: i for i, k in enumerate(order_keys)}
        cur.execute(_ctx_query(p))
        ctx_rows = cur.fetchall()
        ctx_ids = np.fromiter((int(r[0]) for r in ctx_rows), dtype=np.int64, count=len(ctx_rows))
        ctx_keys = np.fromiter((int(r[1]) for r in ctx_rows), dtype=np.int64, count=len(ctx_rows))
        course_ids = np.fromiter((int(r[2]) for r in ctx_rows), dtype=np.int64, count=len(ctx_rows))
        del ctx_rows
        sort = np.argsort(ctx_ids)
        ctx_ids, ctx_keys, course_ids = ctx_ids[sort], ctx_keys[sort], course_ids[sort]
        del sort
        # A school category moved below another category keeps its own subtree
        # (shallowest first, so a school moved inside a moved school wins).
        for cid, path in cats.moved:
            if not path:
                continue
            like = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
            cur.execute(f"SELECT id FROM {p}context WHERE path = %s OR path LIKE %s", (path, like))
            sub = np.array(sorted(int(r[0]) for r in cur.fetchall()), dtype=np.int64)
            ctx_keys[np.searchsorted(ctx_ids, sub)] = cid
        key_values, key_inverse = np.unique(ctx_keys, return_inverse=True)
        ctx_rank = np.array([rank_of[bucket_of(int(k))] for k in key_values], dtype=np.int32)[key_inverse]
        del ctx_keys, key_inverse
        is_course = course_ids > 0
        c_order = np.argsort(course_ids[is_course])
        ctx_map = _ContextMap(ctx_ids, ctx_rank, draft=rank_of[_FIXED[_K_DRAFT]],
                              orphan=rank_of[_FIXED[_K_ORPHAN]], users=rank_of[_FIXED[_K_USERS]],
                              course_ids=course_ids[is_course][c_order], course_ranks=ctx_rank[is_course][c_order])
        del course_ids, is_course, c_order
        cur.execute("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                    (f"{p}files",))
        est = cur.fetchone()
        # The planner's row count (directory rows included) sizes the partitions.
        with tempfile.TemporaryDirectory(prefix="moodleops-rows-", dir=workdir) as spill_dir:
            spill = _Spill(Path(spill_dir), int(est[0]) if est else 0)
            try:
                _read_rows(cur, _files_query(p), ctx_map, spill)
                inconsistent = 0
                for part in spill.partitions():
                    agg = _aggregate(part, len(order_keys), contents.write if contents is not None else None,
                                     draft=ctx_map.draft)
                    del part
                    for i, key in enumerate(order_keys):
                        b = buckets[key]
                        b.files += int(agg.files[i])
                        b.logical_bytes += int(agg.logical[i])
                        b.unique_bytes += int(agg.unique[i])
                        b.exclusive_bytes += int(agg.exclusive[i])
                        b.apportioned_bytes += int(agg.apportioned[i])
                    pool.distinct_blobs += len(agg.blob_size)
                    pool.distinct_bytes += int(agg.blob_size.sum())
                    inconsistent += agg.inconsistent
                    del agg
            finally:
                spill.close()

        # Aliases to external repositories: the empty content's hash with the size the
        # repository reported. Indexed (contenthash): cheap.
        cur.execute(f"""SELECT CASE WHEN component = 'user' AND filearea = 'draft' THEN {_K_DRAFT}
                                    ELSE contextid END, COUNT(*), SUM(filesize)
                          FROM {p}files WHERE contenthash = %s AND filesize > 0 GROUP BY 1""", (EMPTY_HASH,))
        ext = cur.fetchall()
        if ext:
            ranks = ctx_map.ranks_of(np.array([int(r[0]) for r in ext], dtype=np.int64))
            for rank, (_, n, claimed) in zip(ranks.tolist(), ext, strict=True):
                b = buckets[order_keys[rank]]
                b.external_refs += int(n)
                b.external_claimed_bytes += int(claimed)

        # Course backups in users' backup areas, listed (indexed: component, filearea).
        school_of_rank = {rank_of[k]: k[1] for k in order_keys if k[0] == SCHOOL}
        backups: list[BackupFile] = []
        cur.execute(f"""SELECT filename, filesize, substring(filename from '{_BACKUP_NAME_SQL}')::bigint
                          FROM {p}files
                         WHERE component = 'user' AND filearea = 'backup' AND filesize > 0
                           AND filename ~ '{_BACKUP_NAME_SQL}' ORDER BY filename""")
        for name, size, course in cur.fetchall():
            rank = ctx_map.course_rank(int(course))
            backups.append(BackupFile(school_of_rank.get(rank, "") if rank is not None else "", int(course),
                                      "user_backup_area", str(name), int(size)))
        course_school = {int(c): school_of_rank[int(r)] for c, r in
                         zip(ctx_map.course_ids.tolist(), ctx_map.course_ranks.tolist(), strict=True)
                         if int(r) in school_of_rank}
        auto_dir = _auto_backup_dir(cfg, cur)

        accounts, acc_warnings = _accounts(cfg, cur)
        warnings += acc_warnings

    for prob in cats.problems:
        warnings.append(prob.detail)
    if cats.unmapped:
        warnings.append("top-level categories claimed by no school (counted as unmapped): "
                        + ", ".join(f"id {c.id} idnumber {c.idnumber or '(none)'!r}" for c in cats.unmapped))
    result = ScanResult(started_at=started, duration_s=0.0, buckets=buckets, pool=pool, accounts=accounts,
                        hosted_expiry=cfg.accounts.next_expiry(today), unmapped_categories=cats.unmapped,
                        missing_schools=cats.missing, inconsistent_hashes=inconsistent, warnings=warnings,
                        category_problems=cats.problems, backups=backups)
    return DbSnapshot(result, course_school, auto_dir, contents)


def _auto_backup_dir(cfg: ScanConfig, cur: psycopg.Cursor[Any]) -> Path | None:
    """Moodle's automated backup directory when backups are written there
    (backup_auto_storage 1: that directory only, 2: course area and directory)."""
    cur.execute(f"""SELECT name, value FROM {cfg.db.prefix}config_plugins
                     WHERE plugin = 'backup' AND name IN ('backup_auto_storage', 'backup_auto_destination')""")
    conf = {str(n): str(v or "") for n, v in cur.fetchall()}
    if conf.get("backup_auto_storage", "0") in ("1", "2") and conf.get("backup_auto_destination"):
        return Path(conf["backup_auto_destination"])
    return None


def _accounts(cfg: ScanConfig, cur: psycopg.Cursor[Any]) -> tuple[dict[str, AccountStats], list[str]]:
    """Active, suspended and hosted (expiring at the next 31 August) accounts per school.
    A school with no such account has 0, not nothing; None only when the type cannot be read."""
    p = cfg.db.prefix
    pol = cfg.accounts
    warnings: list[str] = []
    params: dict[str, Any] = {"hosted": list(pol.hosted_types), "pattern": pol.hosted_pattern}
    type_join = ""
    known = True
    if pol.type_source == "profile_field":
        cur.execute(f"SELECT id FROM {p}user_info_field WHERE shortname = %s", (pol.type_field,))
        row = cur.fetchone()
        if row is None:
            known = False
            warnings.append(f"profile field {pol.type_field!r} (accounts.account_type_field) does not exist "
                            "in Moodle: hosted accounts are not counted")
        params["tfield"] = int(row[0]) if row else -1
        type_join = "LEFT JOIN {user_info_data} t ON t.userid = u.id AND t.fieldid = %(tfield)s"
        hosted_sql = "t.data = ANY(%(hosted)s)"
    elif pol.type_source == "idnumber":
        hosted_sql = "u.idnumber ~ %(pattern)s"
    else:   # department | institution | auth: a column of mdl_user (validated name, never user text)
        hosted_sql = f"u.{pol.type_source} = ANY(%(hosted)s)"
    accounts = {s.code: AccountStats(hosted_expiring=0 if known else None) for s in cfg.schools}
    # Who belongs to a school: the one definition (moodleops.membership), all three methods.
    member_sql, m_params = membership.members_sql(membership.Rule(pol.method, pol.membership_field), cfg.schools)
    params.update(m_params)
    cur.execute(moodledb.q(p, f"""
        SELECT m.school,
               COUNT(*) FILTER (WHERE u.suspended = 0),
               COUNT(*) FILTER (WHERE u.suspended <> 0),
               COUNT(*) FILTER (WHERE u.suspended = 0 AND {hosted_sql})
          FROM ({member_sql}) m
          JOIN {{user}} u ON u.id = m.userid
          {type_join}
         GROUP BY m.school"""), params)
    for code, active, suspended, hosted in cur.fetchall():
        accounts[code] = AccountStats(active=int(active), suspended=int(suspended),
                                      hosted_expiring=int(hosted) if known else None)
    return accounts, warnings
