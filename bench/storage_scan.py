"""Benchmark: the storage scan (issue 5) at production scale and beyond.

Builds a scratch PostgreSQL database (default moodleops_bench; the `moodle`
database is only read, by pg_dump --schema-only) whose Moodle tables have the
live site's DDL and indexes, fills it with synthetic Moodle-shaped data
(default 2.5 million mdl_files rows, 20 schools, ~50,000 contexts: schools ->
year subcategories -> courses -> modules and blocks, users; drafts duplicating
saved files, the same content in several courses and schools, backups,
recycle bins, directory rows, system, front page and orphan-context files),
then measures side by side, interleaved, as the read-only role moodleops_ro:

- the scanner's full scan (exporters/storage_scan.py, filedir walk off: the
  files are synthetic), in a subprocess so its peak RSS can be read (wait4);
- the same numbers the way report_coursesize computes them (per course
  SUM(filesize) over its UNION ALL of course, block and module contexts, no
  dedup, summed);
- the floor: COPY (SELECT contenthash, filesize, contextid FROM mdl_files)
  TO STDOUT, streamed and discarded;
- scrape latency of the exporter's /metrics (a subprocess serving a cached
  scan on a loopback port): N sequential GETs idle, then GETs while the
  exporter runs a scan (in its scan child process, as in production).

Targets: full scan <= 2x the bare read, peak RSS < 300 MB, scrape p99 < 50 ms.
The scanner's per-bucket figures are checked against values computed from the
generated data. Results: a table on stdout and bench/results/storage_scan.json.
The scratch database is dropped at the end unless --keep (--reuse skips the
build when it exists with the same shape). BENCH_SWITCH_INTERVAL=<seconds> sets
the exporter child's GIL switch interval (an experiment on scrape latency during
a scan).

  .venv/bin/python bench/storage_scan.py [--rows 2500000] [--contexts 50000] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from moodleops.exporters.storage_config import config_from_inventory
from moodleops.exporters.storage_model import DbTarget, ScanConfig, SchoolSpec, StoragePaths

from moodleops.inventory import Inventory, load_inventory
from moodleops.site import site_of

if TYPE_CHECKING:
    import numpy as np

# numpy and requests are imported where used: the scanner child processes must weigh
# what the exporter weighs, not what the generator needs.

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "storage_scan.json"
LIVE_DB = "moodle"
EMPTY_HASH = b"da39a3ee5e6b4b0d3255bfef95601890afd80709"
TABLES = ("files", "context", "course_categories", "course", "course_modules", "block_instances", "config_plugins",
          "cohort", "cohort_members", "user", "user_info_field", "user_info_data")
TARGET_RATIO, TARGET_RSS_MB, TARGET_P99_MS = 2.0, 300.0, 50.0
NOW = 1_764_000_000   # a fixed "now" keeps the generated data reproducible

# Context levels (lib/accesslib.php)
SYSTEM, USER, CATEGORY, COURSE, MODULE, BLOCK = 10, 30, 40, 50, 70, 80


# --- the scratch database -------------------------------------------------------------------

def psql(db: str, sql: str | None = None, *, stdin: str | None = None) -> str:
    """psql as the postgres superuser (peer auth); stops at the first error."""
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]
    if sql is not None:
        cmd += ["-c", sql]
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"psql on {db} failed: {done.stderr.strip()[:2000]}")
    return done.stdout


def live_ddl(prefix: str, section: str) -> str:
    """The DDL of the tables the scanner and report_coursesize read, as Moodle created them."""
    cmd = ["runuser", "-u", "postgres", "--", "pg_dump", "--schema-only", "--no-owner", "--no-privileges",
           f"--section={section}", "-d", LIVE_DB]
    for t in TABLES:
        cmd += ["-t", f"public.{prefix}{t}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return done.stdout


class CopyIn:
    """COPY <table> FROM STDIN through a psql child: generated text streams in, nothing on disk."""

    def __init__(self, db: str, table: str, columns: Sequence[str]) -> None:
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        self.table = table
        self.proc = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-q",
                                      "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode() if self.proc.stderr else ""
        if self.proc.wait() != 0:
            raise RuntimeError(f"COPY into {self.table} failed: {err.strip()[:2000]}")


def copy_rows(db: str, table: str, columns: Sequence[str], rows: Iterator[bytes]) -> None:
    c = CopyIn(db, table, columns)
    try:
        buf: list[bytes] = []
        for line in rows:
            buf.append(line)
            if len(buf) >= 50_000:
                c.write(b"".join(buf))
                buf.clear()
        c.write(b"".join(buf))
    finally:
        c.close()


# --- synthetic Moodle ---------------------------------------------------------------------

@dataclass
class Shape:
    rows: int
    contexts: int
    schools: int
    seed: int

    def tag(self) -> str:
        return f"rows={self.rows} contexts={self.contexts} schools={self.schools} seed={self.seed}"


@dataclass
class Expected:
    """What the generator knows it wrote: the scanner's figures must match exactly."""

    buckets: dict[str, dict[str, int]]
    distinct_bytes: int
    distinct_blobs: int
    coursesize_total: int
    rows: int
    contexts: int
    courses: int
    users: int


# (component, filearea, mimetype, extension) of each kind of row
AREAS: dict[str, list[tuple[str, str, str, str]]] = {
    "module": [("mod_resource", "content", "application/pdf", "pdf"),
               ("mod_folder", "content", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "docx"),
               ("assignsubmission_file", "submission_files", "application/pdf", "pdf"),
               ("mod_forum", "attachment", "image/jpeg", "jpg"),
               ("mod_page", "content", "image/png", "png"),
               ("mod_label", "intro", "video/mp4", "mp4"),
               ("question", "questiontext", "image/png", "png"),
               ("mod_h5pactivity", "package", "application/zip.h5p", "h5p")],
    "course": [("course", "summary", "image/jpeg", "jpg"), ("course", "overviewfiles", "image/png", "png"),
               ("course", "legacy", "application/pdf", "pdf")],
    "block": [("block_html", "content", "image/png", "png")],
    "category": [("question", "questiontext", "image/png", "png"), ("contentbank", "public", "application/zip.h5p",
                                                                     "h5p")],
    "backup": [("backup", "automated", "application/vnd.moodle.backup", "mbz"),
               ("backup", "course", "application/vnd.moodle.backup", "mbz")],
    "recycle_course": [("tool_recyclebin", "recyclebin_course", "application/vnd.moodle.backup", "mbz")],
    "recycle_cat": [("tool_recyclebin", "recyclebin_coursecat", "application/vnd.moodle.backup", "mbz")],
    "private": [("user", "private", "application/pdf", "pdf"), ("user", "icon", "image/png", "png")],
    "user_backup": [("user", "backup", "application/vnd.moodle.backup", "mbz")],
    "draft": [("user", "draft", "application/pdf", "pdf")],
    "system": [("core_h5p", "libraries", "text/javascript", "js"), ("core_admin", "logo", "image/png", "png")],
    "site": [("course", "summary", "image/png", "png"), ("block_html", "content", "image/jpeg", "jpg")],
    "orphan": [("mod_resource", "content", "application/pdf", "pdf")],
    "zero": [("mod_folder", "content", "text/plain", "txt")],
}
# Shares of the content rows (directory rows come on top, see DIR_SHARE); module takes the rest.
KIND_SHARE = {"course": 0.05, "block": 0.01, "category": 0.02, "backup": 0.0015, "recycle_course": 0.0003,
              "recycle_cat": 0.0001, "private": 0.06, "user_backup": 0.0005, "draft": 0.12, "system": 0.006,
              "site": 0.003, "orphan": 0.002, "zero": 0.003}
LARGE = {"backup", "recycle_course", "recycle_cat", "user_backup"}   # backups: one content each, large
SAVED = {"module", "course", "block", "category", "private", "system", "site", "orphan"}
DIR_SHARE = 0.22          # directory rows ('.', size 0, sha1('')): one per file area in real Moodle
SHARED_SHARE = 0.15       # saved rows whose content is one of the popular, widely shared contents
DRAFT_OF_SAVED = 0.8      # drafts that duplicate a saved file (the rest: uploads never saved)


def bench_schools(inv: Inventory, n: int) -> tuple[SchoolSpec, ...]:
    """The inventory's schools (first n), plus synthetic ones if n is larger."""
    specs = [SchoolSpec(s.code, s.category_idnumber, s.cohort_idnumber, s.alert_bytes) for s in inv.schools[:n]]
    for i in range(len(specs), n):
        specs.append(SchoolSpec(f"bench_{i:02d}", f"BENCH-{i:02d}", f"BENCH-{i:02d}-C", 41_000_000_000))
    return tuple(specs)


def hexes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random sha1-looking lowercase hex strings, as an S40 array."""
    import numpy as np
    table = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = np.frombuffer(rng.bytes(20 * n), dtype=np.uint8).reshape(n, 20)
    out = np.empty((n, 40), dtype=np.uint8)
    out[:, 0::2] = table[raw >> 4]
    out[:, 1::2] = table[raw & 15]
    return out.view("S40").ravel()


def build(db: str, prefix: str, shape: Shape, schools: Sequence[SchoolSpec], type_field: str,
          log: Any) -> Expected:
    import numpy as np
    rng = np.random.default_rng(shape.seed)
    p = prefix

    # -- categories, courses, modules, blocks, users: the context tree ------------------------
    ctx_rows: list[bytes] = []
    ctx_bucket: dict[int, str] = {}          # context id -> expected bucket name

    def add_ctx(level: int, instance: int, parent_path: str, bucket: str) -> tuple[int, str]:
        cid = len(ctx_rows) + 1
        path = f"{parent_path}/{cid}"
        ctx_rows.append(b"%d\t%d\t%d\t%s\t%d\n" % (cid, level, instance, path.encode(), path.count("/")))
        ctx_bucket[cid] = bucket
        return cid, path

    add_ctx(SYSTEM, 0, "", "system")
    site_ctx, _ = add_ctx(COURSE, 1, "/1", "site")
    n_users = max(10, round(shape.contexts * 0.2))
    tops = [(s.category_idnumber, s.code, f"school:{s.code}", 3) for s in schools]
    tops.append(("ARCHIVES-BENCH", "archives", "unmapped", 1))  # a top category no school claims
    n_cats = sum(1 + t[3] for t in tops)
    per_course = 1 + 12 + 2
    n_courses = max(len(tops), (shape.contexts - 2 - n_users - n_cats) // per_course)
    cat_rows: list[bytes] = []
    years: list[tuple[int, str, str]] = []   # (category id, context path, bucket)
    top_ctx: list[int] = []
    cat_ctx: list[int] = []
    for sortorder, (idnumber, code, bucket, nyears) in enumerate(tops, start=1):
        cid = len(cat_rows) + 1
        cctx, cpath = add_ctx(CATEGORY, cid, "/1", bucket)
        top_ctx.append(cctx)
        cat_ctx.append(cctx)
        cat_rows.append(b"%d\t%s\t%s\t0\t%d\t1\t/%d\n" % (cid, f"Bench {code}".encode(), idnumber.encode(),
                                                        sortorder * 10000, cid))
        for y in range(1, nyears + 1):
            yid = len(cat_rows) + 1
            yctx, ypath = add_ctx(CATEGORY, yid, cpath, bucket)
            cat_ctx.append(yctx)
            cat_rows.append(b"%d\tYear %d\t%s\t%d\t%d\t2\t/%d/%d\n" % (
                yid, y, f"{idnumber}-Y{y}".encode(), cid, sortorder * 10000 + y, cid, yid))
            years.append((yid, ypath, bucket))
    course_rows = [b"1\t0\tBench site\tbench-site\t\n"]
    cm_rows: list[bytes] = []
    bi_rows: list[bytes] = []
    course_ctx: list[int] = []
    module_ctx: list[int] = []
    block_ctx: list[int] = []
    # Most courses in the schools, a few in the unmapped category
    weights = np.array([1.0 if b != "unmapped" else 0.3 for _, _, b in years])
    year_of = rng.choice(len(years), size=n_courses, p=weights / weights.sum())
    n_mods = np.clip(rng.poisson(12, size=n_courses), 1, None)
    for i in range(n_courses):
        courseid = i + 2
        yid, ypath, bucket = years[int(year_of[i])]
        cctx, cpath = add_ctx(COURSE, courseid, ypath, bucket)
        course_ctx.append(cctx)
        course_rows.append(b"%d\t%d\tCourse %d\tC%d\t\n" % (courseid, yid, courseid, courseid))
        for _ in range(int(n_mods[i])):
            cmid = len(cm_rows) + 1
            mctx, _ = add_ctx(MODULE, cmid, cpath, bucket)
            module_ctx.append(mctx)
            cm_rows.append(b"%d\t%d\t%d\t%d\t%d\n" % (cmid, courseid, cmid % 20 + 1, cmid, courseid))
        for _ in range(2):
            biid = len(bi_rows) + 1
            bctx, _ = add_ctx(BLOCK, biid, cpath, bucket)
            block_ctx.append(bctx)
            bi_rows.append(b"%d\thtml\t%d\t0\tcourse-view-*\tside-pre\t0\t%d\t%d\n" % (biid, cctx, NOW, NOW))
    user_rows: list[bytes] = []
    user_ctx: list[int] = []
    user_of_ctx: dict[int, int] = {}
    member_rows: list[bytes] = []
    data_rows: list[bytes] = []
    school_of_user = rng.integers(0, len(schools), size=n_users)
    suspended = rng.random(n_users) < 0.05
    deleted = rng.random(n_users) < 0.02
    utype = rng.choice(3, size=n_users, p=[0.9, 0.08, 0.02])
    types = (b"student", b"trainer", b"referent")
    for i in range(n_users):
        uid = i + 1
        uctx, _ = add_ctx(USER, uid, "/1", "users")
        user_ctx.append(uctx)
        user_of_ctx[uctx] = uid
        user_rows.append(b"%d\tmanual\t1\t%d\t%d\t1\tbu%07d\tBench\tUser %d\tbu%d@example.invalid\n" % (
            uid, int(deleted[i]), int(suspended[i]), uid, uid, uid))
        if uid > 2:   # guest and admin belong to no school
            member_rows.append(b"%d\t%d\t%d\t%d\n" % (len(member_rows) + 1, int(school_of_user[i]) + 1, uid, NOW))
            data_rows.append(b"%d\t%d\t1\t%s\n" % (len(data_rows) + 1, uid, types[int(utype[i])]))
    log(f"  {len(ctx_rows):,} contexts: {n_cats} categories, {n_courses:,} courses, {len(module_ctx):,} modules, "
        f"{len(block_ctx):,} blocks, {n_users:,} users")

    copy_rows(db, f"{p}context", ("id", "contextlevel", "instanceid", "path", "depth"), iter(ctx_rows))
    copy_rows(db, f"{p}course_categories", ("id", "name", "idnumber", "parent", "sortorder", "depth", "path"),
              iter(cat_rows))
    copy_rows(db, f"{p}course", ("id", "category", "fullname", "shortname", "summary"), iter(course_rows))
    copy_rows(db, f"{p}course_modules", ("id", "course", "module", "instance", "section"), iter(cm_rows))
    copy_rows(db, f"{p}block_instances", ("id", "blockname", "parentcontextid", "showinsubcontexts",
                                          "pagetypepattern", "defaultregion", "defaultweight", "timecreated",
                                          "timemodified"), iter(bi_rows))
    copy_rows(db, f"{p}user", ("id", "auth", "confirmed", "deleted", "suspended", "mnethostid", "username",
                               "firstname", "lastname", "email"), iter(user_rows))
    copy_rows(db, f"{p}cohort", ("id", "contextid", "name", "idnumber", "descriptionformat", "timecreated",
                                 "timemodified"),
              iter(b"%d\t1\t%s\t%s\t0\t%d\t%d\n" % (i + 1, s.code.encode(), s.cohort_idnumber.encode(), NOW, NOW)
                   for i, s in enumerate(schools)))
    copy_rows(db, f"{p}cohort_members", ("id", "cohortid", "userid", "timeadded"), iter(member_rows))
    copy_rows(db, f"{p}user_info_field", ("id", "shortname", "name", "datatype", "param1"),
              iter([b"1\t%s\tAccount type\tmenu\tstudent\\ntrainer\\nreferent\n" % type_field.encode()]))
    copy_rows(db, f"{p}user_info_data", ("id", "userid", "fieldid", "data"), iter(data_rows))

    # -- files ---------------------------------------------------------------------------------
    n_dir = round(shape.rows * DIR_SHARE)
    n_content = shape.rows - n_dir
    counts = {k: round(n_content * s) for k, s in KIND_SHARE.items()}
    counts["module"] = n_content - sum(counts.values())
    kinds = list(counts)
    kind_of = np.repeat(np.arange(len(kinds)), [counts[k] for k in kinds])
    rng.shuffle(kind_of)
    kidx = {k: i for i, k in enumerate(kinds)}

    ctx_arr = np.zeros(n_content, dtype=np.int64)
    users_arr = np.array(user_ctx, dtype=np.int64)
    mod_arr = np.array(module_ctx, dtype=np.int64)
    mod_w = rng.lognormal(0.0, 1.0, size=len(mod_arr))
    mod_w /= mod_w.sum()
    pools = {"course": np.array(course_ctx), "block": np.array(block_ctx), "category": np.array(cat_ctx),
             "backup": np.array(course_ctx), "recycle_course": np.array(course_ctx),
             "recycle_cat": np.array(top_ctx), "private": users_arr, "user_backup": users_arr,
             "draft": users_arr, "system": np.array([1]), "site": np.array([site_ctx])}
    for k in kinds:
        sel = kind_of == kidx[k]
        n = int(sel.sum())
        if k in ("module", "zero"):
            ctx_arr[sel] = rng.choice(mod_arr, size=n, p=mod_w)
        elif k == "orphan":   # context rows deleted, files not purged yet
            ctx_arr[sel] = len(ctx_rows) + 1 + rng.integers(0, 500, size=n)
        else:
            ctx_arr[sel] = rng.choice(pools[k], size=n)

    # Contents: a pool of popular contents shared across courses and schools, one new content
    # per other saved row, drafts mostly copying a saved row's content, one content per backup.
    is_saved = np.isin(kind_of, [kidx[k] for k in SAVED])
    n_shared = max(100, n_content // 100)
    content = np.full(n_content, -1, dtype=np.int64)
    shared_pick = is_saved & (rng.random(n_content) < SHARED_SHARE)
    content[shared_pick] = (rng.zipf(1.3, size=int(shared_pick.sum())) - 1) % n_shared
    fresh = is_saved & ~shared_pick
    fresh |= np.isin(kind_of, [kidx[k] for k in LARGE])
    draft = kind_of == kidx["draft"]
    copies = draft & (rng.random(n_content) < DRAFT_OF_SAVED)
    fresh |= draft & ~copies
    content[fresh] = n_shared + np.arange(int(fresh.sum()))
    n_contents = n_shared + int(fresh.sum())
    saved_rows = np.flatnonzero(is_saved)
    content[copies] = content[rng.choice(saved_rows, size=int(copies.sum()))]
    zero = kind_of == kidx["zero"]
    content[zero] = n_contents     # sha1(''), size 0
    assert (content >= 0).all()

    size_of = np.clip(rng.lognormal(np.log(40_000), 1.6, size=n_contents + 1), 1, 400e6).astype(np.int64)
    large_rows = np.isin(kind_of, [kidx[k] for k in LARGE])
    size_of[content[large_rows]] = np.clip(rng.lognormal(np.log(25e6), 1.0, size=int(large_rows.sum())),
                                           1e5, 4e9).astype(np.int64)
    size_of[n_contents] = 0
    hash_of = hexes(rng, n_contents + 1)
    hash_of[n_contents] = EMPTY_HASH

    # Directory rows: a '.' row in the context of a random content row, same area.
    dir_src = rng.integers(0, n_content, size=n_dir)
    all_ctx = np.concatenate([ctx_arr, ctx_arr[dir_src]])
    all_kind = np.concatenate([kind_of, kind_of[dir_src]])
    all_content = np.concatenate([content, np.full(n_dir, n_contents)])
    is_dir = np.concatenate([np.zeros(n_content, bool), np.ones(n_dir, bool)])
    order = rng.permutation(shape.rows)   # rows arrive interleaved, as over years of use
    all_ctx, all_kind, all_content, is_dir = all_ctx[order], all_kind[order], all_content[order], is_dir[order]
    area_pick = rng.integers(0, 8, size=shape.rows)
    n_all_users = n_users
    uploader = rng.integers(3, n_all_users + 1, size=shape.rows)
    created = NOW - rng.integers(0, 3 * 365 * 86400, size=shape.rows)
    itemid = np.where(all_kind == kidx["draft"], rng.integers(10**8, 10**9, size=shape.rows), 0)
    pathhash = hexes(rng, shape.rows)
    sizes = size_of[all_content]

    # Expected figures: the bucket of every row, from the generator's own bookkeeping
    bucket_names = sorted(set(ctx_bucket.values()) | {"orphan_context", "draft"})
    bidx = {b: i for i, b in enumerate(bucket_names)}
    ctx_b = np.full(len(ctx_rows) + 502, bidx["orphan_context"], dtype=np.int64)
    for cid, b in ctx_bucket.items():
        ctx_b[cid] = bidx[b]
    row_b = ctx_b[all_ctx]
    row_b[all_kind == kidx["draft"]] = bidx["draft"]
    live = sizes > 0
    lb, lc, ls = row_b[live], all_content[live], sizes[live]
    files = np.bincount(lb, minlength=len(bucket_names))
    logical = np.bincount(lb, weights=ls.astype(np.float64), minlength=len(bucket_names))
    pairs = np.unique(lb * (n_contents + 1) + lc)
    pb, pc = pairs // (n_contents + 1), pairs % (n_contents + 1)
    unique = np.bincount(pb, weights=size_of[pc].astype(np.float64), minlength=len(bucket_names))
    distinct = np.unique(lc)
    # Owners (docs/storage.md): every bucket but draft; draft only for contents no other bucket has.
    nondraft = pb != bidx["draft"]
    owners = np.bincount(pc[nondraft], minlength=n_contents + 1)
    excl = np.where(nondraft, owners[pc] == 1, owners[pc] == 0)
    exclusive = np.bincount(pb[excl], weights=size_of[pc[excl]].astype(np.float64), minlength=len(bucket_names))
    course_like = np.isin(all_ctx, np.concatenate([[site_ctx], course_ctx, module_ctx, block_ctx]))
    expected = Expected(
        buckets={b: {"files": int(files[i]), "logical_bytes": int(logical[i]), "unique_bytes": int(unique[i]),
                     "exclusive_bytes": int(exclusive[i])} for b, i in bidx.items()},
        distinct_bytes=int(size_of[distinct].sum()), distinct_blobs=len(distinct),
        coursesize_total=int(sizes[course_like].sum()), rows=shape.rows, contexts=len(ctx_rows),
        courses=n_courses, users=n_users)
    log(f"  {shape.rows:,} files rows: {n_dir:,} directory rows, {int(live.sum()):,} with content, "
        f"{len(distinct):,} distinct contents, {expected.distinct_bytes / 1e9:,.1f} GB distinct, "
        f"{int(ls.sum()) / 1e9:,.1f} GB logical")

    area_lists = {k: [(c.encode(), a.encode(), m.encode(), e.encode()) for c, a, m, e in AREAS[k]] for k in kinds}
    kind_names = kinds

    def file_lines() -> Iterator[bytes]:
        step = 100_000
        for start in range(0, shape.rows, step):
            end = min(shape.rows, start + step)
            hs = hash_of[all_content[start:end]].tolist()
            phs = pathhash[start:end].tolist()
            for j, (h, ph, cid, k, dr, ap, uid, tc, it, sz) in enumerate(zip(
                    hs, phs, all_ctx[start:end].tolist(), all_kind[start:end].tolist(), is_dir[start:end].tolist(),
                    area_pick[start:end].tolist(), uploader[start:end].tolist(), created[start:end].tolist(),
                    itemid[start:end].tolist(), sizes[start:end].tolist())):
                kind = kind_names[k]
                areas = area_lists[kind]
                comp, area, mime, ext = areas[ap % len(areas)]
                if kind in ("private", "draft", "user_backup"):
                    uid = user_of_ctx.get(cid, uid)
                rid = start + j + 1
                if dr:
                    yield b"%d\t%s\t%s\t%d\t%s\t%s\t%d\t/\t.\t%d\t0\t\\N\t0\t\\N\t\\N\t\\N\t%d\t%d\t0\n" % (
                        rid, h, ph, cid, comp, area, it, uid, tc, tc)
                else:
                    yield (b"%d\t%s\t%s\t%d\t%s\t%s\t%d\t/\tfile_%d.%s\t%d\t%d\t%s\t0\tfile_%d.%s\t"
                           b"Bench Author\tallrightsreserved\t%d\t%d\t0\n") % (
                        rid, h, ph, cid, comp, area, it, rid, ext, uid, sz, mime, rid, ext, tc, tc)

    copy_rows(db, f"{p}files", ("id", "contenthash", "pathnamehash", "contextid", "component", "filearea", "itemid",
                                "filepath", "filename", "userid", "filesize", "mimetype", "status", "source",
                                "author", "license", "timecreated", "timemodified", "sortorder"), file_lines())
    return expected


def create_db(db: str, prefix: str, shape: Shape, schools: Sequence[SchoolSpec], type_field: str,
              log: Any) -> Expected:
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    psql(db, stdin=live_ddl(prefix, "pre-data"))
    t0 = time.monotonic()
    expected = build(db, prefix, shape, schools, type_field, log)
    log(f"  loaded in {time.monotonic() - t0:.0f} s; indexes and keys (post-data DDL)...")
    t0 = time.monotonic()
    psql(db, stdin="SET maintenance_work_mem = '512MB';\n" + live_ddl(prefix, "post-data"))
    # VACUUM sets the hint bits and visibility map, as on a long-lived production table.
    psql(db, "VACUUM (ANALYZE)")
    psql(db, f"GRANT CONNECT ON DATABASE {db} TO moodleops_ro")
    psql(db, f"COMMENT ON DATABASE {db} IS {_quote('moodleops bench ' + shape.tag())}")
    (_state_file(db)).write_text(json.dumps(dataclasses.asdict(expected)))
    log(f"  indexed and vacuumed in {time.monotonic() - t0:.0f} s")
    return expected


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _state_file(db: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{db}.expected.json"


def reusable(db: str, shape: Shape) -> Expected | None:
    got = psql("postgres", f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{db}'")
    if got.strip() != f"moodleops bench {shape.tag()}" or not _state_file(db).is_file():
        return None
    return Expected(**json.loads(_state_file(db).read_text()))


# --- measurements --------------------------------------------------------------------------

def scan_config(dbname: str, nschools: int, tmp: Path) -> tuple[ScanConfig, Inventory]:
    inv = load_inventory("local")
    site = site_of(inv)
    db = DbTarget(host=site.db_host, port=site.db_port, dbname=dbname, user=site.db_ro_user,
                  password=site.secret("db_ro_password"), prefix=site.db_prefix)
    # The files are synthetic (no blobs): no filedir walk; side directories point at an empty dir.
    cfg, _ = config_from_inventory(inv, site, paths=StoragePaths.defaults(tmp), schools=bench_schools(inv, nschools),
                                   db=db, walk_filedir=False)
    return cfg, inv


def ro_connect(cfg: ScanConfig) -> psycopg.Connection[Any]:
    d = cfg.db
    return psycopg.connect(host=d.host, port=d.port, dbname=d.dbname, user=d.user, password=d.password,
                           application_name="moodleops-bench")


def bare_read(cfg: ScanConfig) -> float:
    """The floor: one sequential read of the columns the scan needs, streamed and discarded."""
    t0 = time.monotonic()
    sql = f"COPY (SELECT contenthash, filesize, contextid FROM {cfg.db.prefix}files) TO STDOUT"
    with ro_connect(cfg) as conn, conn.cursor() as cur, cur.copy(sql) as cp:
        for _ in cp:
            pass
    return time.monotonic() - t0


def coursesize_sql(p: str) -> str:
    """report_coursesize_filesize_sql() (catalyst locallib.php) with {prefix} spliced in."""
    return f"""
SELECT id AS course, SUM(filesize) AS filesize
  FROM (SELECT c.id, f.filesize
          FROM {p}course c
          JOIN {p}context cx ON cx.contextlevel = {COURSE} AND cx.instanceid = c.id
          JOIN {p}files f ON f.contextid = cx.id
        UNION ALL
        SELECT c.id, f.filesize
          FROM {p}block_instances bi
          JOIN {p}context cx1 ON cx1.contextlevel = {BLOCK} AND cx1.instanceid = bi.id
          JOIN {p}context cx2 ON cx2.contextlevel = {COURSE} AND cx2.id = bi.parentcontextid
          JOIN {p}course c ON c.id = cx2.instanceid
          JOIN {p}files f ON f.contextid = cx1.id
        UNION ALL
        SELECT c.id, f.filesize
          FROM {p}course_modules cm
          JOIN {p}context cx ON cx.contextlevel = {MODULE} AND cx.instanceid = cm.id
          JOIN {p}course c ON c.id = cm.course
          JOIN {p}files f ON f.contextid = cx.id) x
 GROUP BY id"""


def coursesize(cfg: ScanConfig) -> tuple[float, int, int]:
    t0 = time.monotonic()
    with ro_connect(cfg) as conn, conn.cursor() as cur:
        cur.execute(coursesize_sql(cfg.db.prefix))
        rows = cur.fetchall()
    total = sum(int(r[1] or 0) for r in rows)
    return time.monotonic() - t0, total, len(rows)


def child(mode: str, args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", mode, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM) in MB: the high-water mark of its own address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def reap(proc: subprocess.Popen[str]) -> tuple[int, float]:
    """Wait for a child; its exit status and ru_maxrss in MB (wait4: this child only).

    Linux carries the parent's RSS at fork/vfork into the child's ru_maxrss (exec records
    the old address space's high-water mark), so with a parent holding the generator's arrays
    ru_maxrss over-reads; the child's own VmHWM is the figure used for the target."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def scanner_run(db: str, nschools: int, profile: bool) -> tuple[dict[str, Any], float, float, float]:
    t0 = time.monotonic()
    proc = child("scan", [db, str(nschools), "1" if profile else "0"])
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = proc.stdout.read()
    rc, rss = reap(proc)
    wall = time.monotonic() - t0
    if rc != 0:
        raise RuntimeError(f"scanner child failed (exit {rc}): {out[-2000:]}")
    last = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    got = json.loads(last[len("RESULT "):])
    return got, float(got["vm_hwm_mb"]), rss, wall


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100.0 * len(s) + 0.5) - 1))]


def scrapes(db: str, nschools: int, n: int) -> dict[str, Any]:
    import requests
    proc = child("serve", [db, str(nschools)])
    assert proc.stdin is not None and proc.stdout is not None
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "READY":
        proc.kill()
        raise RuntimeError(f"exporter child did not start: {ready}")
    url = f"http://127.0.0.1:{ready[1]}/metrics"
    http = requests.Session()

    def get() -> tuple[float, int]:
        t0 = time.perf_counter()
        r = http.get(url, timeout=10)
        r.raise_for_status()
        return (time.perf_counter() - t0) * 1000.0, len(r.content)

    for _ in range(20):   # connection set-up, first formatting
        get()
    idle = [get() for _ in range(n)]
    # Then while the exporter runs a full scan (in its child process since issue 5's fix).
    scanned = threading.Event()
    proc.stdin.write("scan\n")
    proc.stdin.flush()

    def wait_scanned() -> None:
        assert proc.stdout is not None
        proc.stdout.readline()
        scanned.set()

    threading.Thread(target=wait_scanned, daemon=True).start()
    busy: list[tuple[float, int]] = []
    while not scanned.is_set() and len(busy) < 50 * n:
        busy.append(get())
    proc.stdin.close()
    rest = proc.stdout.read()
    rc, _ = reap(proc)
    if rc != 0:
        raise RuntimeError(f"exporter child failed (exit {rc}): {rest[-2000:]}")
    hwm = [float(ln.split()[1]) for ln in rest.splitlines() if ln.startswith("HWM ")]

    def summary(xs: list[tuple[float, int]]) -> dict[str, float]:
        ms = [x[0] for x in xs]
        return {"count": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms) if ms else 0.0}

    return {"idle": summary(idle), "during_scan": summary(busy), "body_bytes": idle[-1][1],
            "exporter_peak_rss_mb": hwm[-1] if hwm else 0.0}


# --- child processes ------------------------------------------------------------------------

def child_main(mode: str, argv: Sequence[str]) -> int:
    import logging
    logging.disable(logging.WARNING)   # the bench's unmapped category is on purpose
    db, nschools = argv[0], int(argv[1])
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        cfg, inv = scan_config(db, nschools, Path(tmp))
        if mode == "scan":
            from moodleops.exporters.storage_scan import scan
            if argv[2] == "1":
                import cProfile
                import pstats
                prof = cProfile.Profile()
                result = prof.runcall(scan, cfg)
                pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
            else:
                result = scan(cfg)
            out = {"duration_s": result.duration_s,
                   "buckets": {(f"school:{s}" if b == "school" else b): dataclasses.asdict(v)
                               for (b, s), v in result.buckets.items()},
                   "distinct_bytes": result.pool.distinct_bytes, "distinct_blobs": result.pool.distinct_blobs,
                   "inconsistent": result.inconsistent_hashes, "warnings": result.warnings,
                   "accounts": {k: dataclasses.asdict(v) for k, v in result.accounts.items()},
                   "vm_hwm_mb": vm_hwm_mb()}
            print("RESULT " + json.dumps(out), flush=True)
            return 0
        from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
        if os.environ.get("BENCH_SWITCH_INTERVAL"):   # experiment: GIL switch interval (s)
            sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
        ex = StorageExporter(cfg, PoolPolicy(inv.platform.pool_warning_ratio, inv.platform.pool_critical_ratio),
                             interval_s=3600.0)
        if not ex.scan_once():
            print("FAILED", flush=True)
            return 1
        server, _ = ex.serve("127.0.0.1", 0)
        print(f"READY {server.server_port}", flush=True)   # type: ignore[attr-defined]
        for line in sys.stdin:
            if line.strip() == "scan":
                threading.Thread(target=lambda: print(f"SCANNED {ex.scan_once()}", flush=True),
                                 daemon=True).start()
        print(f"HWM {vm_hwm_mb()}", flush=True)
        return 0


# --- main -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    pg = psql("postgres", "SELECT version()").strip().split(" on ")[0]
    sb = psql("postgres", "SHOW shared_buffers").strip()
    return {"cpus": os.cpu_count(), "mem_gib": round(mem / 2**30, 1), "python": platform.python_version(),
            "postgresql": pg, "shared_buffers": sb, "kernel": platform.release()}


def check(expected: Expected, got: dict[str, Any]) -> list[str]:
    """Differences between the scanner's figures and the generator's bookkeeping (empty: exact)."""
    bad: list[str] = []
    for name, exp in expected.buckets.items():
        have = got["buckets"].get(name, {})
        for k, v in exp.items():
            if int(have.get(k, 0)) != v:
                bad.append(f"{name}.{k}: scanner {have.get(k)} expected {v}")
    if got["distinct_bytes"] != expected.distinct_bytes:
        bad.append(f"distinct_bytes: scanner {got['distinct_bytes']} expected {expected.distinct_bytes}")
    appo = sum(int(b["apportioned_bytes"]) for b in got["buckets"].values())
    if appo != expected.distinct_bytes:
        bad.append(f"sum of apportioned {appo} != distinct {expected.distinct_bytes}")
    return bad


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_500_000, help="mdl_files rows (default %(default)s)")
    ap.add_argument("--contexts", type=int, default=50_000, help="about this many contexts (default %(default)s)")
    ap.add_argument("--schools", type=int, default=20, help="schools (default %(default)s, the inventory's first)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds of each method (default %(default)s)")
    ap.add_argument("--scrapes", type=int, default=2000, help="GETs of /metrics (default %(default)s)")
    ap.add_argument("--db", default="moodleops_bench", help="scratch database name (default %(default)s)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database at the end")
    ap.add_argument("--reuse", action="store_true", help="reuse the scratch database if it has the same shape")
    ap.add_argument("--profile", action="store_true", help="cProfile one scanner run (stderr)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.db.startswith("moodleops_bench") or args.db == LIVE_DB:
        print(f"bench: error: --db {args.db!r} must start with moodleops_bench", file=sys.stderr)
        return 2
    if args.rows < 10_000 or args.contexts < 500 or args.repeat < 1 or args.scrapes < 10:
        print("bench: error: --rows >= 10000, --contexts >= 500, --repeat >= 1, --scrapes >= 10", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    inv = load_inventory("local")
    site = site_of(inv)
    shape = Shape(args.rows, args.contexts, args.schools, args.seed)
    schools = bench_schools(inv, args.schools)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    expected = reusable(args.db, shape) if args.reuse else None
    try:
        if expected is None:
            log(f"building {args.db} ({shape.tag()})...")
            t0 = time.monotonic()
            expected = create_db(args.db, site.db_prefix, shape, schools, inv.platform.accounts.account_type_field, log)
            build_s = time.monotonic() - t0
        else:
            log(f"reusing {args.db} ({shape.tag()})")
            build_s = 0.0
        table_mb = float(psql(args.db, f"SELECT pg_table_size('{site.db_prefix}files') / 1048576.0").strip())
        with tempfile.TemporaryDirectory() as tmp:
            cfg, _ = scan_config(args.db, args.schools, Path(tmp))
        log("warming the cache (one bare read, one coursesize)...")
        bare_read(cfg)
        coursesize(cfg)
        bare: list[float] = []
        cs: list[float] = []
        sc: list[float] = []
        sc_wall: list[float] = []
        rss: list[float] = []
        ru: list[float] = []
        cs_total = cs_courses = 0
        got: dict[str, Any] = {}
        for i in range(args.repeat):
            bare.append(bare_read(cfg))
            t, cs_total, cs_courses = coursesize(cfg)
            cs.append(t)
            got, peak, maxrss, wall = scanner_run(args.db, args.schools, False)
            sc.append(float(got["duration_s"]))
            sc_wall.append(wall)
            rss.append(peak)
            ru.append(maxrss)
            log(f"  round {i + 1}: bare read {bare[-1]:.2f} s, coursesize {cs[-1]:.2f} s, "
                f"scan {sc[-1]:.2f} s ({wall:.2f} s process, {peak:.0f} MB peak)")
        if args.profile:
            log("profiling one scanner run (cProfile, stderr)...")
            scanner_run(args.db, args.schools, True)
        problems = check(expected, got)
        if cs_total != expected.coursesize_total:
            problems.append(f"coursesize total {cs_total} expected {expected.coursesize_total}")
        log(f"scraping /metrics {args.scrapes} times, then during a scan...")
        scrape = scrapes(args.db, args.schools, args.scrapes)
    finally:
        if not args.keep:
            psql("postgres", f"DROP DATABASE IF EXISTS {args.db}")
            _state_file(args.db).unlink(missing_ok=True)
    load_after = os.getloadavg()

    bare_med, sc_med, cs_med = statistics.median(bare), statistics.median(sc), statistics.median(cs)
    ratio = sc_med / bare_med
    peak_rss = max(rss)
    p99 = scrape["idle"]["p99_ms"]
    targets = {
        "scan_within_2x_bare_read": {"value": round(ratio, 2), "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "peak_rss_under_300_mb": {"value": round(peak_rss, 1), "target": TARGET_RSS_MB, "met": peak_rss < TARGET_RSS_MB},
        "scrape_p99_under_50_ms": {"value": round(p99, 2), "target": TARGET_P99_MS, "met": p99 < TARGET_P99_MS},
        "scrape_p99_during_scan_under_50_ms": {"value": round(scrape["during_scan"]["p99_ms"], 2),
                                               "target": TARGET_P99_MS,
                                               "met": scrape["during_scan"]["p99_ms"] < TARGET_P99_MS},
    }
    schools_logical = sum(int(v["logical_bytes"]) for k, v in got["buckets"].items() if k.startswith("school:"))
    report = {
        "date": started.isoformat(timespec="seconds"), "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "shape": dataclasses.asdict(shape) | {"contexts_built": expected.contexts, "courses": expected.courses,
                                              "users": expected.users, "files_table_mb": round(table_mb, 1),
                                              "distinct_contents": expected.distinct_blobs,
                                              "distinct_bytes": expected.distinct_bytes},
        "build_s": round(build_s, 1), "repeat": args.repeat,
        "bare_read_s": [round(x, 3) for x in bare], "coursesize_s": [round(x, 3) for x in cs],
        "scan_s": [round(x, 3) for x in sc], "scan_process_wall_s": [round(x, 3) for x in sc_wall],
        "scan_peak_rss_mb": [round(x, 1) for x in rss],
        "scan_ru_maxrss_mb": [round(x, 1) for x in ru],
        "bench_parent_rss_mb": round(vm_hwm_mb(), 1),
        "coursesize": {"courses": cs_courses, "total_bytes": cs_total},
        "scan": {"schools_logical_bytes": schools_logical, "distinct_bytes": got["distinct_bytes"],
                 "inconsistent_hashes": got["inconsistent"]},
        "scrape": scrape, "targets": targets, "exact": not problems, "problems": problems[:20],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(args.out)

    def yes(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\nstorage scan benchmark, {started:%Y-%m-%d}, {report['machine']['cpus']} CPUs, "
          f"{report['machine']['mem_gib']} GiB, {report['machine']['postgresql']}; "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{shape.rows:,} files rows ({table_mb:,.0f} MB), {expected.contexts:,} contexts, {args.schools} schools, "
          f"{expected.distinct_blobs:,} distinct contents ({expected.distinct_bytes / 1e9:,.0f} GB)\n")
    print(f"| {'method (median of ' + str(args.repeat) + ')':<48} | {'time':>8} | {'x bare':>6} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 8}|")
    for name, t in (("bare read (COPY contenthash,filesize,contextid)", bare_med),
                    ("report_coursesize way (per course, no dedup)", cs_med),
                    ("our full scan (all buckets, dedup, shares)", sc_med)):
        print(f"| {name:<48} | {t:>6.2f} s | {t / bare_med:>5.2f}x |")
    print(f"\nscan peak RSS {peak_rss:.0f} MB (child's VmHWM; wait4 ru_maxrss {max(ru):.0f} MB, which also "
          f"counts the bench parent's pages at fork) (target < {TARGET_RSS_MB:.0f}): {yes(peak_rss < TARGET_RSS_MB)}")
    print(f"scan / bare read {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {yes(ratio <= TARGET_RATIO)}")
    for phase in ("idle", "during_scan"):
        s = scrape[phase]
        print(f"scrape {phase:<11} {s['count']:>5} GETs: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
              f"max {s['max_ms']:.1f} ms (target p99 < {TARGET_P99_MS:.0f}): {yes(s['p99_ms'] < TARGET_P99_MS)}")
    print(f"/metrics body {scrape['body_bytes']:,} bytes; exporter process peak RSS "
          f"{scrape['exporter_peak_rss_mb']:.0f} MB")
    print(f"figures exact vs generated data: {'yes' if not problems else 'NO: ' + '; '.join(problems[:5])}")
    print(f"coursesize sum {cs_total / 1e9:,.1f} GB over {cs_courses:,} courses; "
          f"schools' logical {schools_logical / 1e9:,.1f} GB; distinct {got['distinct_bytes'] / 1e9:,.1f} GB")
    print(f"written to {args.out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
