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
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from typing import Any

from moodleops.exporters.storage_model import FiledirStats, ScanConfig, ScanResult
from moodleops.exporters.storage_scan import ScanError, scan
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("moodleops.storage")

Scanner = Callable[[ScanConfig], ScanResult]


def _scan_child(cfg: ScanConfig, conn: Any) -> None:
    """Child process body: scan, send ("ok", result), ("error", message) or ("crash", traceback)."""
    try:
        conn.send(("ok", scan(cfg)))
    except ScanError as exc:
        conn.send(("error", str(exc)))
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to the parent, which logs it
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def scan_in_child(cfg: ScanConfig) -> ScanResult:
    """scan(cfg) in a fresh process; a ScanError there is raised here with the same message.

    'spawn', not fork: this process has threads (HTTP server), and a forked child would
    inherit their locks in whatever state they were. The cost, ~0.5 s of start-up per
    scan, is nothing next to the scan interval."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_scan_child, args=(cfg, sender), name="moodleops-storage-scan", daemon=True)
    proc.start()
    sender.close()   # ours: only the child's copy stays open, so its death ends recv() with EOFError
    try:
        kind, payload = receiver.recv()
    except EOFError:
        proc.join(10)
        raise ScanError(f"storage scan process died without a result (exit status {proc.exitcode})") from None
    finally:
        receiver.close()
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if kind == "ok":
        return payload   # type: ignore[no-any-return]
    if kind == "error":
        raise ScanError(payload)
    raise RuntimeError(f"storage scan process crashed:\n{payload}")


@dataclass(frozen=True)
class PoolPolicy:
    """Pool thresholds exported as metrics, so alert rules never hard-code them."""

    warning_ratio: float
    critical_ratio: float


@dataclass
class ExporterState:
    result: ScanResult | None = None
    filedir: FiledirStats | None = None       # last walk (walks run less often than scans)
    filedir_at: float = 0.0
    last_attempt: float = 0.0
    last_success: float = 0.0
    last_error: str = ""
    ok: bool = False                          # the last attempt succeeded
    scans: int = 0
    errors: int = 0


class StorageExporter:
    def __init__(self, cfg: ScanConfig, policy: PoolPolicy, *, interval_s: float = 900.0,
                 walk_interval_s: float = 86400.0, scanner: Scanner = scan_in_child) -> None:
        self.cfg = cfg
        self.policy = policy
        self.interval_s = interval_s
        self.walk_interval_s = walk_interval_s
        self._scanner = scanner
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()     # one scan at a time, whoever asks
        self._state = ExporterState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- scanning -----------------------------------------------------------------
    def scan_once(self) -> bool:
        """One scan; True when it succeeded. Never raises for expected failures.
        Concurrent calls wait for each other: never two scans at once."""
        with self._scan_lock:
            return self._scan_once()

    def _scan_once(self) -> bool:
        with self._lock:
            walk_due = self.cfg.walk_filedir and (time.time() - self._state.filedir_at >= self.walk_interval_s)
        cfg = dataclasses.replace(self.cfg, walk_filedir=walk_due)
        started = time.time()
        try:
            result = self._scanner(cfg)
        except ScanError as exc:
            with self._lock:
                s = self._state
                s.last_attempt, s.ok, s.last_error = started, False, str(exc)
                s.scans += 1
                s.errors += 1
            log.error("%s (serving the last good values, marked stale)", exc)
            return False
        except Exception as exc:  # a bug must not kill the thread: report it and keep serving
            with self._lock:
                s = self._state
                s.last_attempt, s.ok, s.last_error = started, False, f"{type(exc).__name__}: {exc}"
                s.scans += 1
                s.errors += 1
            log.exception("storage scan crashed")
            return False
        with self._lock:
            s = self._state
            s.result, s.last_attempt, s.last_success, s.ok, s.last_error = (
                result, started, time.time(), True, "")
            s.scans += 1
            if result.pool.filedir is not None:
                s.filedir, s.filedir_at = result.pool.filedir, started
        for w in result.warnings:
            log.warning("%s", w)
        if result.pool.filedir is not None:
            for e in result.pool.filedir.errors[:20]:
                log.warning("filedir: %s", e)
        log.info("scan done in %.1f s", result.duration_s)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="storage-scan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.scan_once()
            # Fixed cadence from the start of each scan; a slow scan delays, never stacks.
            self._stop.wait(max(1.0, self.interval_s - (time.monotonic() - t0)))

    def state(self) -> ExporterState:
        with self._lock:
            return dataclasses.replace(self._state)

    def is_stale(self, now: float | None = None) -> bool:
        s = self.state()
        now = time.time() if now is None else now
        return s.result is None or not s.ok or now - s.last_success > 2 * self.interval_s + 60

    # --- serving ------------------------------------------------------------------
    def collector(self) -> Collector:
        return _Collector(self)

    def serve(self, host: str, port: int) -> tuple[object, threading.Thread]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector())
        return start_http_server(port, addr=host, registry=registry)


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
        if st.result is not None:
            yield from _result(st.result)
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
     "The bucket's share of the pool: each content split evenly between the buckets using it"),
)


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
    if pool.fs_capacity_bytes is not None:
        yield _g("moodle_storage_filesystem_size_bytes", "Capacity of the filesystem holding moodledata",
                 pool.fs_capacity_bytes)
        yield _g("moodle_storage_filesystem_used_bytes", "Used bytes of the filesystem holding moodledata",
                 pool.fs_used_bytes or 0)
        yield _g("moodle_storage_filesystem_avail_bytes",
                 "Bytes available to unprivileged users on the moodledata filesystem",
                 pool.fs_available_bytes or 0)
    docs = {"trash": ("trashdir", "Deleted contents awaiting the cron's purge (trashdir)"),
            "temp": ("tempdir", "Moodle's temp directory, backup working directories included"),
            "backup_temp": ("backup_tempdir", "Backup and restore working directories"),
            "cache": ("cachedir", "Moodle's file caches (cachedir)"),
            "localcache": ("localcachedir", "Moodle's local cache, grows until caches are purged")}
    for key, size in sorted(pool.dir_bytes.items()):
        metric, doc = docs[key]
        yield _g(f"moodle_storage_{metric}_bytes", doc, size)
    yield _g("moodle_storage_unmapped_categories", "Top-level categories claimed by no school",
             len(r.unmapped_categories))
    yield _g("moodle_storage_missing_school_categories",
             "Schools of the inventory whose category is not in Moodle", len(r.missing_schools))
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


def _filedir(f: FiledirStats, at: float) -> Iterator[Metric]:
    yield _g("moodle_storage_filedir_last_walk_timestamp_seconds", "Unix time the last filedir walk started", at)
    yield _g("moodle_storage_filedir_blobs", "Content files found in filedir", f.blobs)
    yield _g("moodle_storage_filedir_bytes", "Apparent size of the content files in filedir", f.bytes)
    yield _g("moodle_storage_orphan_blobs", "Contents on disk that no files row references", f.orphan_blobs)
    yield _g("moodle_storage_orphan_bytes", "Size of the contents on disk that no row references", f.orphan_bytes)
    yield _g("moodle_storage_missing_blobs", "Contents referenced by rows but absent from filedir and trash",
             f.missing_blobs)
    yield _g("moodle_storage_missing_bytes", "Size of the referenced contents absent from disk", f.missing_bytes)
    yield _g("moodle_storage_filedir_walk_errors", "filedir entries the last walk could not read",
             len(f.errors))
