"""The storage exporter: a background thread scans on its own schedule, a
Prometheus collector serves the last result.

A scrape never touches the database or the disk: it formats what the last
scan left in memory, so any number of Prometheus servers can scrape as often
as they like and the database sees one scan per interval. When a scan fails
(database gone, timeout), the last good values keep being served, marked
stale, and the next scan is simply tried again on schedule.

Each scan runs in a child process (scan_in_child): the scan is CPU-bound for
seconds, and in this process it would hold the GIL the HTTP server needs, so
scrapes during a scan would wait on it (bench/storage_scan.py: p99 337 ms).
Only this process serves; the child only scans and sends back the result."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from moodleops.exporters.background import BackgroundExporter
from moodleops.exporters.filedir import WalkProgress
from moodleops.exporters.storage_disk import WalkStuck, watch
from moodleops.exporters.storage_disk import apply as apply_disk
from moodleops.exporters.storage_model import (
    CATEGORY_PROBLEMS,
    FiledirStats,
    ScanConfig,
    ScanResult,
    StoragePaths,
)
from moodleops.exporters.storage_scan import DbSnapshot, ScanDatabaseError, ScanError, read_database
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("moodleops.storage")

Scanner = Callable[[ScanConfig], ScanResult]


@dataclass
class ScanEvents:
    """What a scan in a child process reports, as it happens."""

    on_db: Callable[[ScanResult], None] = lambda r: None
    on_progress: Callable[[dict[str, Any]], None] = lambda p: None


def _progress_of(p: WalkProgress) -> dict[str, Any]:
    return {"phase": p.phase, "ratio": p.ratio, "dirs_listed": p.dirs_listed, "dirs_reused": p.dirs_reused,
            "blobs": p.blobs, "call_s": p.running_for(), "call_path": p.call_path}


def _scan_child(cfg: ScanConfig, conn: Any) -> None:
    """Child process body. Sends ("db", result) as soon as the transaction is closed,
    ("progress", {...}) every second of the disk part, then ("disk", figures); or
    ("stuck", message, progress), ("error", message, database_fault), ("crash", traceback)."""
    tmp = tempfile.mkdtemp(prefix="moodleops-scan-")
    stuck = False
    try:
        snap = read_database(cfg, workdir=Path(tmp))
        conn.send(("db", snap.result))
        progress = WalkProgress()
        try:
            disk = watch(cfg, snap, progress, lambda p: conn.send(("progress", _progress_of(p))))
        except WalkStuck as exc:
            stuck = True
            conn.send(("stuck", str(exc), _progress_of(progress)))
        else:
            conn.send(("disk", disk))
    except ScanError as exc:
        # The cause does not cross the pipe: say whether it was the database's fault.
        conn.send(("error", str(exc), exc.__cause__ is not None))
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to the parent, which logs it
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if stuck:
        # A thread is blocked in a filesystem call that may never return: leave now
        # instead of waiting for it at interpreter shutdown.
        os._exit(3)


class ScanStuck(ScanError):
    """The disk part of the scan stopped making progress (hung filesystem)."""


def run_scan(cfg: ScanConfig, events: ScanEvents | None = None) -> ScanResult:
    """scan(cfg) in a fresh process, reporting as it goes; a ScanError there is raised
    here with the same message; a stuck disk part raises ScanStuck after the database
    figures were handed to events.on_db.

    'spawn', not fork: this process has threads (HTTP server), and a forked child would
    inherit their locks in whatever state they were. The cost, ~0.5 s of start-up per
    scan, is nothing next to the scan interval."""
    events = events or ScanEvents()
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_scan_child, args=(cfg, sender), name="moodleops-storage-scan", daemon=True)
    proc.start()
    sender.close()   # ours: only the child's copy stays open, so its death ends recv() with EOFError
    result: ScanResult | None = None
    try:
        while True:
            # Silence longer than the longest legitimate wait is a hang of the child itself.
            patience = (cfg.statement_timeout_s + 120 if result is None else cfg.fs_call_timeout_s + 60)
            if not receiver.poll(patience):
                proc.kill()
                raise ScanStuck(f"storage scan process silent for {patience:.0f} s: killed")
            try:
                msg = receiver.recv()
            except EOFError:
                proc.join(10)
                raise ScanError(f"storage scan process died without a result (exit status {proc.exitcode})") \
                    from None
            kind = msg[0]
            if kind == "db":
                result = msg[1]
                events.on_db(msg[1])
            elif kind == "progress":
                events.on_progress(msg[1])
            elif kind == "disk":
                assert result is not None
                apply_disk(DbSnapshot(result, {}, None, None), msg[1])
                result.pool.fs_path = str(cfg.paths.filedir)
                break
            elif kind == "stuck":
                events.on_progress(msg[2])
                proc.kill()
                raise ScanStuck(msg[1])
            elif kind == "error":
                raise (ScanDatabaseError if len(msg) > 2 and msg[2] else ScanError)(msg[1])
            else:
                raise RuntimeError(f"storage scan process crashed:\n{msg[1]}")
    finally:
        receiver.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    result.duration_s = time.time() - result.started_at
    return result


def scan_in_child(cfg: ScanConfig) -> ScanResult:
    """run_scan without events (the whole result at the end)."""
    return run_scan(cfg)


@dataclass(frozen=True)
class PoolPolicy:
    """Pool thresholds exported as metrics, so alert rules never hard-code them."""

    warning_ratio: float
    critical_ratio: float


@dataclass
class ExporterState:
    result: ScanResult | None = None          # database figures of the last scan (+ its disk part once done)
    filedir: FiledirStats | None = None       # last completed walk (walks run less often than scans)
    filedir_at: float = 0.0                   # unix time that walk ended
    full_walk_at: float = 0.0                 # unix time the last complete full walk ended
    disk: ScanResult | None = None            # last scan whose disk part completed (filesystem, side dirs)
    last_attempt: float = 0.0
    last_success: float = 0.0                 # the database part
    last_error: str = ""
    ok: bool = False                          # the last attempt's database part succeeded
    scans: int = 0
    errors: int = 0
    walk_running: bool = False
    walk_stuck: bool = False                  # the last disk part was abandoned: a filesystem call hung
    walk_stuck_detail: str = ""
    walk_stuck_total: int = 0
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)


PathsSource = Callable[[], "StoragePaths | None"]


class StorageExporter(BackgroundExporter):
    thread_name = "storage-scan"

    def __init__(self, cfg: ScanConfig, policy: PoolPolicy, *, interval_s: float = 900.0,
                 walk_interval_s: float = 86400.0, full_walk_interval_s: float = 7 * 86400.0,
                 scanner: Scanner | None = None, paths_source: PathsSource | None = None) -> None:
        super().__init__(interval_s)
        self.cfg = cfg
        self.policy = policy
        self.walk_interval_s = walk_interval_s
        self.full_walk_interval_s = full_walk_interval_s
        self._scanner = scanner
        # Set when the data paths could not be asked of Moodle at start-up (defaults used):
        # asked again before each scan until Moodle answers.
        self._paths_source = paths_source
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()     # one scan at a time, whoever asks
        self._state = ExporterState()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    # --- scanning -----------------------------------------------------------------
    def scan_once(self) -> bool:
        """One scan; True when its database part succeeded. Never raises for expected
        failures. Concurrent calls wait for each other: never two scans at once."""
        with self._scan_lock:
            return self._scan_once()

    def _refresh_paths(self) -> None:
        if self._paths_source is None:
            return
        paths = self._paths_source()
        if paths is not None:
            self.cfg = dataclasses.replace(self.cfg, paths=paths)
            self._paths_source = None
            log.info("data paths now from Moodle: filedir %s", paths.filedir)

    def _on_db(self, result: ScanResult) -> None:
        with self._lock:
            s = self._state
            s.result, s.last_success, s.ok, s.last_error = result, time.time(), True, ""
            s.walk_running = True
        for w in result.warnings:
            log.warning("%s", w)

    def _on_progress(self, progress: dict[str, Any]) -> None:
        with self._lock:
            self._state.progress = progress

    def _scan_once(self) -> bool:
        self._refresh_paths()
        now = time.time()
        with self._lock:
            st = self._state
            walk_due = self.cfg.walk_filedir and (now - st.filedir_at >= self.walk_interval_s or st.walk_stuck)
            full_due = now - st.full_walk_at >= self.full_walk_interval_s
        cfg = dataclasses.replace(self.cfg, walk_filedir=walk_due, full_walk=full_due)
        started = time.time()
        with self._lock:
            self._state.last_attempt = started
            self._state.progress = {}
        try:
            if self._scanner is not None:
                result = self._scanner(cfg)
                self._on_db(result)
            else:
                result = run_scan(cfg, ScanEvents(on_db=self._on_db, on_progress=self._on_progress))
        except ScanStuck as exc:
            with self._lock:
                s = self._state
                s.scans += 1
                s.walk_running, s.walk_stuck, s.walk_stuck_detail = False, True, str(exc)
                s.walk_stuck_total += 1
                db_ok = s.last_success >= started
                if not db_ok:
                    s.ok, s.last_error = False, str(exc)
                    s.errors += 1
            log.error("%s (database figures %s)", exc, "published" if db_ok else "not published")
            return db_ok
        except ScanError as exc:
            with self._lock:
                s = self._state
                s.ok, s.last_error, s.walk_running = False, str(exc), False
                s.scans += 1
                s.errors += 1
            log.error("%s (serving the last good values, marked stale)", exc)
            return False
        except Exception as exc:  # a bug must not kill the thread: report it and keep serving
            with self._lock:
                s = self._state
                s.ok, s.last_error, s.walk_running = False, f"{type(exc).__name__}: {exc}", False
                s.scans += 1
                s.errors += 1
            log.exception("storage scan crashed")
            return False
        with self._lock:
            s = self._state
            s.result, s.ok, s.last_error, s.disk = result, True, "", result
            s.scans += 1
            s.walk_running, s.walk_stuck, s.walk_stuck_detail = False, False, ""
            if result.pool.filedir is not None:
                s.filedir, s.filedir_at = result.pool.filedir, result.disk_at
                if not result.pool.filedir.incremental:
                    s.full_walk_at = result.disk_at
        if result.pool.filedir is not None:
            for e in result.pool.filedir.errors[:20]:
                log.warning("filedir: %s", e)
        log.info("scan done in %.1f s (database %.1f s)", result.duration_s, result.db_duration_s)
        return True

    def refresh(self) -> bool:
        return self.scan_once()

    def state(self) -> ExporterState:
        with self._lock:
            return dataclasses.replace(self._state)

    def last_success(self) -> tuple[bool, float, bool]:
        s = self.state()
        return s.result is not None, s.last_success, s.ok

    # --- serving ------------------------------------------------------------------
    def collector(self) -> Collector:
        return _Collector(self)

    def exposition(self) -> bytes:
        # Formatted at each scrape from the state in memory: a scan's figures are
        # published in parts (database, then disk, progress), and a scan runs in a
        # child process, so formatting here does not compete with it for the GIL.
        return generate_latest(self._registry)


class _Collector(Collector):
    def __init__(self, exporter: StorageExporter) -> None:
        self.exporter = exporter

    def describe(self) -> list[Metric]:
        return []   # no describe-time collection: the registry must not trigger work

    def collect(self) -> Iterator[Metric]:
        ex = self.exporter
        st = ex.state()
        now = time.time()
        yield from _health(ex, st, now)
        yield from _policy(ex)
        yield from _walk(st)
        if st.result is not None:
            yield from _result(st.result)
        if st.disk is not None:
            yield from _disk(st.disk)
        if st.filedir is not None:
            yield from _filedir(st.filedir, st.filedir_at)


def _g(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels:
        g = GaugeMetricFamily(name, doc, labels=list(labels))
        g.add_metric(list(labels.values()), value)
        return g
    return GaugeMetricFamily(name, doc, value=value)


def _health(ex: StorageExporter, st: ExporterState, now: float) -> Iterator[Metric]:
    p = "moodleops_exporter_"
    yield _g(p + "up", "1 if the last storage scan succeeded, 0 if it failed or none ran yet",
             1.0 if st.ok else 0.0)
    yield _g(p + "stale", "1 if the storage values served are not from a recent successful scan",
             1.0 if ex.is_stale(now) else 0.0)
    yield _g(p + "last_success_timestamp_seconds", "Unix time the last successful storage scan ended",
             st.last_success)
    yield _g(p + "last_scan_timestamp_seconds", "Unix time the last storage scan attempt started",
             st.last_attempt)
    yield _g(p + "scan_interval_seconds", "Configured time between two storage scans", ex.interval_s)
    if st.result is not None:
        yield _g(p + "scan_duration_seconds", "Duration of the last successful storage scan",
                 st.result.duration_s)
    c = CounterMetricFamily(p + "scans", "Storage scans attempted")
    c.add_metric([], st.scans)
    yield c
    c = CounterMetricFamily(p + "scan_errors", "Storage scans that failed")
    c.add_metric([], st.errors)
    yield c


def _policy(ex: StorageExporter) -> Iterator[Metric]:
    cfg = ex.cfg
    yield _g("moodle_storage_pool_size_bytes", "Storage pool of the agreement (inventory)", cfg.pool_bytes)
    yield _g("moodle_storage_pool_warning_ratio", "Pool usage ratio that raises a warning (inventory)",
             ex.policy.warning_ratio)
    yield _g("moodle_storage_pool_critical_ratio", "Pool usage ratio that is critical (inventory)",
             ex.policy.critical_ratio)
    g = GaugeMetricFamily("moodle_storage_school_alert_threshold_bytes",
                          "Storage above which a school's referents are alerted (inventory)", labels=["school"])
    for s in cfg.schools:
        g.add_metric([s.code], s.alert_bytes)
    yield g


_BUCKET_METRICS = (
    ("files", "moodle_storage_files", "Files (rows with content) in the bucket"),
    ("logical_bytes", "moodle_storage_logical_bytes", "Sum of file sizes over the bucket's rows"),
    ("unique_bytes", "moodle_storage_unique_bytes", "Size of the distinct contents the bucket references"),
    ("exclusive_bytes", "moodle_storage_exclusive_bytes",
     "Size of the contents only this bucket references (freed if it were emptied)"),
    ("apportioned_bytes", "moodle_storage_apportioned_bytes",
     "The bucket's share of the pool: each content split evenly between its owners (drafts never own)"),
    ("external_refs", "moodle_storage_external_references",
     "Aliases to external repositories (no stored bytes, not in the pool)"),
    ("external_claimed_bytes", "moodle_storage_external_claimed_bytes",
     "Sizes claimed by aliases to external repositories (not stored, not in the pool)"),
)


def _walk(st: ExporterState) -> Iterator[Metric]:
    p = st.progress
    yield _g("moodleops_exporter_walk_running", "1 while the disk part of a scan (filesystem, filedir walk) runs",
             1.0 if st.walk_running else 0.0)
    yield _g("moodleops_exporter_walk_stuck",
             "1 if the last disk part was abandoned: a filesystem call did not return in time (hung NFS?)",
             1.0 if st.walk_stuck else 0.0)
    c = CounterMetricFamily("moodleops_exporter_walk_stuck", "Disk parts abandoned on a hung filesystem call")
    c.add_metric([], st.walk_stuck_total)
    yield c
    yield _g("moodle_storage_filedir_walk_progress_ratio",
             "Share of filedir's ab/cd directories the running (or last) walk has passed", float(p.get("ratio", 0.0)))
    yield _g("moodle_storage_filedir_walk_dirs_listed", "ab/cd directories the running (or last) walk listed",
             float(p.get("dirs_listed", 0)))
    yield _g("moodle_storage_filedir_walk_dirs_reused",
             "ab/cd directories the running (or last) walk took from the previous walk (unchanged)",
             float(p.get("dirs_reused", 0)))
    yield _g("moodle_storage_filedir_walk_blobs_seen", "Blobs the running (or last) walk has seen",
             float(p.get("blobs", 0)))
    yield _g("moodleops_exporter_filesystem_call_seconds",
             "How long the filesystem call the disk part is in has been running (0: none)", float(p.get("call_s", 0.0)))


def _result(r: ScanResult) -> Iterator[Metric]:
    for attr, name, doc in _BUCKET_METRICS:
        g = GaugeMetricFamily(name, doc, labels=["bucket", "school"])
        for (bucket, school), stats in sorted(r.buckets.items()):
            g.add_metric([bucket, school], getattr(stats, attr))
        yield g
    pool = r.pool
    yield _g("moodle_storage_distinct_bytes", "Size of all distinct contents referenced by files rows",
             pool.distinct_bytes)
    yield _g("moodle_storage_distinct_blobs", "Distinct contents referenced by files rows", pool.distinct_blobs)
    yield _g("moodle_storage_unmapped_categories", "Top-level categories claimed by no school",
             len(r.unmapped_categories))
    yield _g("moodle_storage_missing_school_categories",
             "Schools of the inventory whose category is not in Moodle", len(r.missing_schools))
    g = GaugeMetricFamily("moodle_storage_school_category_problem",
                          "1 if the school's category is missing, moved under another category or renamed",
                          labels=["school", "problem"])
    probs = {(c.school, c.problem) for c in r.category_problems}
    for code in sorted(r.accounts):
        for problem in CATEGORY_PROBLEMS:
            g.add_metric([code, problem], 1.0 if (code, problem) in probs else 0.0)
    yield g
    yield _g("moodle_storage_db_scan_timestamp_seconds", "Unix time of the snapshot the database figures are from",
             r.started_at)
    yield _g("moodle_storage_db_scan_duration_seconds", "Duration of the database part (the transaction)",
             r.db_duration_s)
    yield from _backups(r, "user_backup_area")
    yield _g("moodle_storage_inconsistent_hashes", "Contents recorded with different sizes (should be 0)",
             r.inconsistent_hashes)
    yield _g("moodle_storage_hosted_expiry_timestamp_seconds",
             "Unix time hosted accounts expire next (inventory accounts.hosted_expiry)",
             datetime.combine(r.hosted_expiry, dtime()).timestamp())
    for attr, name, doc in (("active", "moodle_storage_school_accounts_active", "Active accounts of the school"),
                            ("suspended", "moodle_storage_school_accounts_suspended",
                             "Suspended accounts of the school"),
                            ("hosted_expiring", "moodle_storage_school_accounts_hosted_expiring",
                             "Active hosted (trainer, referent) accounts that expire next 31 August")):
        g = GaugeMetricFamily(name, doc, labels=["school"])
        for code, acc in sorted(r.accounts.items()):
            value = getattr(acc, attr)
            if value is not None:
                g.add_metric([code], value)
        yield g


def _backups(r: ScanResult, where: str) -> Iterator[Metric]:
    """Course backups tied to a school by their file name; `where` is the label value."""
    agg: dict[str, list[int]] = {code: [0, 0] for code in r.accounts}
    for bk in r.backups:
        if bk.where == where:
            cell = agg.setdefault(bk.school, [0, 0])
            cell[0] += 1
            cell[1] += bk.size
    for i, (name, doc) in enumerate((
            ("moodle_storage_course_backups", ("Course backups tied to their course's school by their file name "
                                              "(school \"\": course gone or in no school)")),
            ("moodle_storage_course_backup_bytes", "Size of the course backups tied to their course's school"))):
        g = GaugeMetricFamily(name, doc, labels=["school", "where"])
        for code, cell in sorted(agg.items()):
            g.add_metric([code, where], float(cell[i]))
        yield g


def _disk(r: ScanResult) -> Iterator[Metric]:
    """The disk part of the last scan that completed one: its own timestamp."""
    pool = r.pool
    yield _g("moodle_storage_disk_timestamp_seconds",
             "Unix time the last completed disk part (filesystem, directories outside filedir) ended", r.disk_at)
    if pool.fs_capacity_bytes is not None:
        yield _g("moodle_storage_filesystem_size_bytes", "Capacity of the filesystem holding filedir",
                 pool.fs_capacity_bytes)
        yield _g("moodle_storage_filesystem_used_bytes", "Used bytes of the filesystem holding filedir",
                 pool.fs_used_bytes or 0)
        yield _g("moodle_storage_filesystem_avail_bytes",
                 "Bytes available to unprivileged users on the filesystem holding filedir",
                 pool.fs_available_bytes or 0)
    docs = {"trash": ("trashdir", "Deleted contents awaiting the cron's purge (trashdir)"),
            "temp": ("tempdir", "Moodle's temp directory, backup working directories included"),
            "backup_temp": ("backup_tempdir", "Backup and restore working directories"),
            "cache": ("cachedir", "Moodle's file caches (cachedir)"),
            "localcache": ("localcachedir", "Moodle's local cache, grows until caches are purged")}
    for key, size in sorted(pool.dir_bytes.items()):
        metric, doc = docs[key]
        yield _g(f"moodle_storage_{metric}_bytes", doc, size)
    if any(b.where == "automated_dir" for b in r.backups):
        yield from _backups(r, "automated_dir")


def _filedir(f: FiledirStats, at: float) -> Iterator[Metric]:
    yield _g("moodle_storage_filedir_last_walk_timestamp_seconds", "Unix time the last completed filedir walk ended",
             at)
    yield _g("moodle_storage_filedir_last_walk_incremental",
             "1 if the last walk listed only the ab/cd directories that changed", 1.0 if f.incremental else 0.0)
    yield _g("moodle_storage_filedir_blobs", "Content files found in filedir", f.blobs)
    yield _g("moodle_storage_filedir_bytes", "Apparent size of the content files in filedir", f.bytes)
    yield _g("moodle_storage_orphan_blobs", "Contents on disk that no files row references", f.orphan_blobs)
    yield _g("moodle_storage_orphan_bytes", "Size of the contents on disk that no row references", f.orphan_bytes)
    yield _g("moodle_storage_missing_blobs", "Contents referenced by rows but absent from filedir and trash",
             f.missing_blobs)
    yield _g("moodle_storage_missing_bytes", "Size of the referenced contents absent from disk", f.missing_bytes)
    yield _g("moodle_storage_filedir_walk_errors", "filedir entries the last walk could not read",
             len(f.errors))
