"""The Moodle health and abuse exporter: reads of Moodle's tables on their own
schedule, a scrape serves the last read.

Same conventions as the storage exporter: a scrape only serves what is in
memory; a failed read keeps the last good values, marked stale. The reads run
in a child process (watch_child.py: their Python work would otherwise take the
GIL from the scrape threads); a background thread here asks for them and
renders each read's figures to the exposition format once. A scrape takes the
last snapshot without a lock and adds only the few time-dependent samples
(cron lag, ages, staleness) to those bytes (bench/watch_scrape.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from moodleops.exporters.background import BackgroundExporter
from moodleops.exporters.watch_child import ChildReader
from moodleops.exporters.watch_model import WatchConfig, WatchResult
from moodleops.exporters.watch_read import WatchError, read
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("moodleops.watch")

Reader = Callable[[WatchConfig], WatchResult]


@dataclass(frozen=True)
class Thresholds:
    """Inventory thresholds (platform.yml watch), exported so rules never hard-code them."""

    mass_mailing_per_hour: int
    failed_logins_burst_10m: int
    cron_stuck_seconds: int
    pin_grace_days: int


def _version(text: str) -> Decimal | None:
    try:
        return Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None


class PinTracker:
    """Since when each pin of moodle.yml has not been served, kept in a small
    JSON file so that an exporter restart does not reset the clock of the
    "pin not applied after N days" alert. Written atomically (temp + rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._since: dict[str, dict[str, object]] = {}
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                self._since = {str(k): dict(v) for k, v in doc.items() if isinstance(v, dict)}
            except (OSError, ValueError) as exc:
                log.warning("pin state %s unreadable (%s): starting the clocks again", path, exc)

    def update(self, pins: dict[str, str], served: dict[str, str], now: float) -> dict[str, float]:
        """component -> since when its pin is not served (only components not at their pin)."""
        since: dict[str, dict[str, object]] = {}
        for component, pin in pins.items():
            want, got = _version(pin), _version(served.get(component, ""))
            if want is not None and got is not None and got == want:
                continue
            old = self._since.get(component)
            # A new pin restarts its own clock; the same pin keeps the first sighting.
            keep = old is not None and old.get("pin") == pin
            since[component] = {"pin": pin, "since": old["since"] if keep and old else now}
        if since != self._since:
            self._since = since
            self._save()
        return {c: float(v["since"]) for c, v in since.items()}   # type: ignore[arg-type]

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._since, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save pin state %s: %s", self.path, exc)


@dataclass(frozen=True)
class WatchState:
    """One immutable snapshot: a read replaces the whole object, so a scrape takes
    `exporter.state()` without any lock and always sees one read's figures."""

    result: WatchResult | None = None
    pins_behind: dict[str, float] = dataclasses.field(default_factory=dict)
    rendered: bytes = b""                 # the read's time-independent metrics, exposition format
    last_attempt: float = 0.0
    last_success: float = 0.0
    last_error: str = ""
    ok: bool = False
    reads: int = 0
    errors: int = 0


class WatchExporter(BackgroundExporter):
    thread_name = "moodle-watch"

    def __init__(self, cfg: WatchConfig, thresholds: Thresholds, *, interval_s: float = 60.0,
                 pin_state: Path | None = None, reader: Reader | None = None) -> None:
        """reader: None reads Moodle in the child process; a function is called in the
        reading thread itself (tests)."""
        super().__init__(interval_s)
        self.cfg = cfg
        self.thresholds = thresholds
        self._child = ChildReader(read) if reader is None else None
        self._reader: Reader = self._child if self._child is not None else reader   # type: ignore[assignment]
        self._pins = PinTracker(pin_state)
        self._read_lock = threading.Lock()     # one read at a time; only readers take it
        self._state = WatchState()

    def refresh(self) -> bool:
        return self.read_once()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._child is not None:
            # A read still running (hung database) must not hold the stop: close anyway.
            locked = self._read_lock.acquire(timeout=timeout)
            try:
                self._child.close()
            finally:
                if locked:
                    self._read_lock.release()

    def read_once(self) -> bool:
        """One read; True when it succeeded. Never raises; never two reads at once."""
        with self._read_lock:
            started = time.time()
            try:
                result = self._reader(self.cfg)
                behind = self._pins.update({p.component: p.version for p in self.cfg.pins},
                                           result.served_versions, started)
            except WatchError as exc:
                return self._failed(started, str(exc))
            except Exception as exc:   # a bug must not kill the thread: report it and keep serving
                log.exception("watch read crashed")
                return self._failed(started, f"{type(exc).__name__}: {exc}")
            rendered = _render(_StaticCollector(self, result, behind))
            s = self._state
            # One assignment publishes the whole read (atomic for the scrape threads).
            self._state = dataclasses.replace(s, result=result, pins_behind=behind, rendered=rendered,
                                              last_attempt=started, last_success=time.time(), ok=True,
                                              last_error="", reads=s.reads + 1)
            for w in result.warnings:
                log.warning("%s", w)
            return True

    def _failed(self, started: float, message: str) -> bool:
        s = self._state
        self._state = dataclasses.replace(s, last_attempt=started, ok=False, last_error=message,
                                          reads=s.reads + 1, errors=s.errors + 1)
        log.error("%s (serving the last good values, marked stale)", message)
        return False

    def state(self) -> WatchState:
        return self._state

    def last_success(self) -> tuple[bool, float, bool]:
        s = self._state
        return s.result is not None, s.last_success, s.ok

    def collector(self) -> Collector:
        """Everything, formatted now (tests, other registries); serving uses exposition()."""
        return _Collector(self)

    def exposition(self) -> bytes:
        """What a scrape returns: the last read's rendered bytes plus the time-dependent samples."""
        st = self._state
        return _render(_DynamicCollector(self, st, time.time())) + st.rendered


def _render(collector: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def _g(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, labels: list[str], rows: Iterator[tuple[list[str], float]]) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in rows:
        g.add_metric(values, v)
    return g


class _Collector(Collector):
    def __init__(self, exporter: WatchExporter) -> None:
        self.exporter = exporter

    def describe(self) -> list[Metric]:
        return []   # no describe-time collection: the registry must not trigger work

    def collect(self) -> Iterator[Metric]:
        ex = self.exporter
        st = ex.state()
        yield from _DynamicCollector(ex, st, time.time()).collect()
        if st.result is not None:
            yield from _StaticCollector(ex, st.result, st.pins_behind).collect()


class _StaticCollector(Collector):
    """What one read says, independent of the time of the scrape: rendered once per read."""

    def __init__(self, exporter: WatchExporter, result: WatchResult, behind: dict[str, float]) -> None:
        self.exporter, self.result, self.behind = exporter, result, behind

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from _thresholds(self.exporter)
        yield from _health(self.result)
        yield from _versions(self.exporter, self.result, self.behind)
        yield from _abuse(self.result)
        yield from _fpm(self.result)


class _DynamicCollector(Collector):
    """The samples that depend on the scrape's time: the exporter's own health, lags and ages."""

    def __init__(self, exporter: WatchExporter, st: WatchState, now: float) -> None:
        self.exporter, self.st, self.now = exporter, st, now

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from _own_health(self.exporter, self.st, self.now)
        if self.st.result is not None:
            yield from _ages(self.st.result, self.now)


def _own_health(ex: WatchExporter, st: WatchState, now: float) -> Iterator[Metric]:
    p = "moodleops_watch_"
    yield _g(p + "up", "1 if the last read of Moodle's tables succeeded", 1.0 if st.ok else 0.0)
    yield _g(p + "stale", "1 if the values served are not from a recent successful read",
             1.0 if ex.is_stale(now) else 0.0)
    yield _g(p + "last_success_timestamp_seconds", "Unix time the last successful read ended", st.last_success)
    yield _g(p + "read_interval_seconds", "Configured time between two reads", ex.interval_s)
    if st.result is not None:
        yield _g(p + "read_duration_seconds", "Duration of the last successful read", st.result.duration_s)
    c = CounterMetricFamily(p + "reads", "Reads of Moodle's tables attempted")
    c.add_metric([], st.reads)
    yield c
    c = CounterMetricFamily(p + "read_errors", "Reads of Moodle's tables that failed")
    c.add_metric([], st.errors)
    yield c


def _thresholds(ex: WatchExporter) -> Iterator[Metric]:
    t = ex.thresholds
    yield _g("moodle_mass_mailing_threshold_per_hour",
             "Messages + notifications one user may send in an hour before the mass-mailing alert (inventory)",
             t.mass_mailing_per_hour)
    yield _g("moodle_failed_logins_burst_threshold",
             "Failed logins on one school within 10 minutes that make a burst (inventory)",
             t.failed_logins_burst_10m)
    yield _g("moodle_cron_stuck_threshold_seconds", "Cron lag above which cron is stuck (inventory)",
             t.cron_stuck_seconds)
    yield _g("moodle_pin_grace_seconds", "Time a pin of moodle.yml may stay unapplied (inventory)",
             t.pin_grace_days * 86400)


def _ages(r: WatchResult, now: float) -> Iterator[Metric]:
    # From the cached timestamps at scrape time: a stopped cron's lag keeps growing
    # even between two reads.
    if r.cron_last_start is not None:
        yield _g("moodle_cron_lag_seconds", "Seconds since Moodle's cron last started",
                 max(0.0, now - r.cron_last_start))
    yield _g("moodle_adhoc_task_oldest_age_seconds", "Age of the oldest queued ad-hoc task (0: queue empty)",
             max(0.0, now - r.adhoc_oldest_created) if r.adhoc_oldest_created else 0.0)


def _health(r: WatchResult) -> Iterator[Metric]:
    if r.cron_last_start is not None:
        yield _g("moodle_cron_last_start_timestamp_seconds", "Unix time Moodle's cron last started",
                 r.cron_last_start)
    yield _labelled("moodle_scheduled_task_fail_delay_seconds",
                    "Fail delay of an enabled scheduled task (0 when its last run succeeded)",
                    ["task"], iter([([t.task], float(t.fail_delay_s)) for t in r.tasks]))
    yield _g("moodle_scheduled_tasks_failing", "Scheduled tasks whose last run failed",
             sum(1 for t in r.tasks if t.fail_delay_s > 0))
    yield _g("moodle_adhoc_tasks_queued", "Ad-hoc tasks waiting in the queue", r.adhoc_queued)
    yield _g("moodle_adhoc_tasks_failing", "Queued ad-hoc tasks that failed at least once", r.adhoc_failing)
    yield _g("moodle_sessions_active", "Moodle sessions active within the session timeout", r.sessions_active)
    yield _labelled("moodle_users_online", "Users of the school whose last access is within the online window",
                    ["school"], iter([([k], float(v)) for k, v in sorted(r.online.items())]))
    yield _labelled("moodle_maintenance_enabled", "1 when Moodle is in maintenance mode (web: admin setting, "
                    "cli: climaintenance.html)", ["mode"],
                    iter([(["web"], float(r.maintenance_web)), (["cli"], float(r.maintenance_cli))]))


def _versions(ex: WatchExporter, r: WatchResult, pins_behind: dict[str, float]) -> Iterator[Metric]:
    served = GaugeMetricFamily("moodle_version_served", "Version number Moodle reports for the component",
                               labels=["component"])
    pinned = GaugeMetricFamily("moodle_version_pinned", "Version pinned in moodle.yml for the component",
                               labels=["component"])
    behind = GaugeMetricFamily("moodle_pin_not_applied", "1 when the component does not serve its pin",
                               labels=["component"])
    since = GaugeMetricFamily("moodle_pin_not_applied_since_timestamp_seconds",
                              "Unix time the exporter first saw the component not serving its pin",
                              labels=["component"])
    for pin in ex.cfg.pins:
        got = _version(r.served_versions.get(pin.component, ""))
        want = _version(pin.version)
        if got is not None:
            served.add_metric([pin.component], float(got))
        if want is not None:
            pinned.add_metric([pin.component], float(want))
        behind.add_metric([pin.component], 1.0 if pin.component in pins_behind else 0.0)
        if pin.component in pins_behind:
            since.add_metric([pin.component], pins_behind[pin.component])
    yield from (served, pinned, behind, since)


def _abuse(r: WatchResult) -> Iterator[Metric]:
    yield _labelled("moodle_messages_sent_1h", "Messages or notifications sent by the school's users in the "
                    "last hour (Moodle's logstore)", ["school", "kind"],
                    iter([([s, k], float(n)) for (s, k), n in sorted(r.messages.items())]))
    yield _labelled("moodle_user_messages_sent_1h_max", "Most messages + notifications one user of the school "
                    "sent in the last hour", ["school"],
                    iter([([s], float(n)) for s, n in sorted(r.max_sender.items())]))
    yield _labelled("moodle_top_sender_messages_sent_1h", "Messages + notifications sent in the last hour by "
                    "the school's top senders (platform.yml watch.top_senders per school)",
                    ["school", "username"],
                    iter([([t.school, t.username], float(t.sent)) for t in r.top_senders]))
    yield _labelled("moodle_failed_logins_10m", "Failed logins in the last 10 minutes by the user's school "
                    "(unknown: no such username) and source address class", ["school", "source"],
                    iter([([s, c], float(n)) for (s, c), n in sorted(r.failed_logins.items())]))
    yield _g("moodle_site_admins", "Site administrators ($CFG->siteadmins)", r.site_admins)
    yield _labelled("moodle_new_site_admin", "1 for each user made site administrator in the last 24 hours",
                    ["username"], iter([([u], 1.0) for u in r.new_site_admins]))
    yield _labelled("moodle_role_assignments_new_24h", "Assignments of a watched role (platform.yml "
                    "watch.watched_roles) made in the last 24 hours, by school (platform: system context)",
                    ["role", "school"], iter([([ro, s], float(n)) for (ro, s), n in sorted(r.new_roles.items())]))


_FPM = {
    "active processes": ("phpfpm_active_processes", "gauge", "php-fpm processes serving a request"),
    "idle processes": ("phpfpm_idle_processes", "gauge", "Idle php-fpm processes"),
    "total processes": ("phpfpm_processes", "gauge", "php-fpm processes of the pool"),
    "listen queue": ("phpfpm_listen_queue", "gauge", "Requests waiting for a free php-fpm process"),
    "max listen queue": ("phpfpm_listen_queue_max", "gauge", "Longest listen queue since php-fpm started"),
    "accepted conn": ("phpfpm_accepted_connections", "counter", "Requests php-fpm accepted"),
    "max children reached": ("phpfpm_max_children_reached", "counter",
                             "Times php-fpm hit pm.max_children (requests had to wait)"),
    "slow requests": ("phpfpm_slow_requests", "counter", "Requests slower than request_slowlog_timeout"),
    "start since": ("phpfpm_uptime_seconds", "gauge", "Seconds since php-fpm started"),
}


def _fpm(r: WatchResult) -> Iterator[Metric]:
    yield _g("phpfpm_up", "1 if the last read of php-fpm's status page succeeded", 1.0 if r.fpm else 0.0)
    for key, value in sorted(r.fpm.items()):
        name, kind, doc = _FPM[key]
        if kind == "counter":
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        else:
            yield _g(name, doc, value)
