"""The Grafana dashboards of the exporters, as code, built with Grafana's own
SDK (grafana-foundation-sdk).

`python -m moodleops.exporters.dashboard` rewrites exporters/dashboards/*.json
(committed; provisioned as dashboard files by the monitoring role). Tests parse
them back with the SDK and run every panel's query against a real Prometheus."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, gauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

DIR = Path(__file__).resolve().parent / "dashboards"
OUTPUT = DIR / "moodle_storage.json"        # the storage dashboard (kept name: provisioned path)
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

SCHOOL_UNIQUE = 'moodle_storage_unique_bytes{bucket="school"}'
SCHOOL_RATIO = (f"{SCHOOL_UNIQUE} / on (school) group_left "
                "max by (school) (moodle_storage_school_alert_threshold_bytes)")
POOL_RATIO = "moodle_storage_distinct_bytes / moodle_storage_pool_size_bytes"

Target = tuple[str, str]                    # (PromQL, legend)
PanelBuilder = Any                          # the SDK's panel builders share no public base type


def _thresholds(*steps: tuple[float | None, str]) -> gd.ThresholdsConfig:
    return gd.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


RATIO_STEPS = _thresholds((None, "green"), (0.8, "orange"), (0.9, "red"))


# Each kind with its options set: Grafana fills in defaults for missing options
# on import, but a provisioned read-only dashboard should not depend on that.
def _last() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _stat() -> stat.Panel:
    return stat.Panel().reduce_options(_last()).graph_mode(cm.BigValueGraphMode.AREA)


def _gauge() -> gauge.Panel:
    return gauge.Panel().reduce_options(_last())


def _table() -> table.Panel:
    return table.Panel().show_header(True)


def _series() -> timeseries.Panel:
    return timeseries.Panel().legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                                     .placement(cm.LegendPlacement.RIGHT).show_legend(True))


def _panel(builder: PanelBuilder, pid: int, title: str, grid: tuple[int, int, int, int],
           targets: list[Target], unit: str) -> PanelBuilder:
    x, y, w, h = grid
    builder.id(pid).title(title).datasource(DS).grid_pos(dm.GridPos(h=h, w=w, x=x, y=y)).unit(unit)
    for i, (expr, legend) in enumerate(targets):
        builder.with_target(gp.Dataquery().ref_id(chr(65 + i)).expr(expr).legend_format(legend).datasource(DS))
    return builder


def _dashboard(uid: str, title: str, tags: list[str], time_from: str, refresh: str) -> gd.Dashboard:
    return (gd.Dashboard(title).uid(uid).tags(["moodle", "moodleops", *tags]).time(time_from, "now")
            .refresh(refresh).readonly().version(1)
            .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))


def storage() -> gd.Dashboard:
    d = _dashboard("moodle-storage", "Moodle storage per school", ["storage"], "now-30d", "5m")
    d.with_panel(_panel(_gauge().min(0).max(1).thresholds(RATIO_STEPS), 1,
                        "Pool used (distinct content / agreement pool)", (0, 0, 6, 8),
                        [(POOL_RATIO, "pool")], "percentunit"))
    d.with_panel(_panel(_series(), 2, "Pool: content vs agreement size vs filesystem", (6, 0, 18, 8),
                        [("moodle_storage_distinct_bytes", "distinct content"),
                         ("moodle_storage_pool_size_bytes", "agreement pool"),
                         ("moodle_storage_filesystem_used_bytes", "filesystem used"),
                         ("moodle_storage_filesystem_size_bytes", "filesystem size"),
                         ("predict_linear(moodle_storage_distinct_bytes[14d], 90 * 86400)", "in 90 days (trend)")],
                        "decbytes"))
    d.with_panel(_panel(bargauge.Panel().reduce_options(_last()).min(0).max(1).thresholds(RATIO_STEPS)
                        .orientation(cm.VizOrientation.HORIZONTAL)
                        .display_mode(cm.BarGaugeDisplayMode.GRADIENT),
                        3, "Schools: usage vs alert threshold", (0, 8, 12, 12),
                        [(SCHOOL_RATIO, "{{school}}")], "percentunit"))
    d.with_panel(_panel(_table(), 4, "Top schools (unique bytes)", (12, 8, 12, 12),
                        [(f"topk(20, {SCHOOL_UNIQUE})", "{{school}}"),
                         ("moodle_storage_school_alert_threshold_bytes", "threshold {{school}}")], "decbytes"))
    d.with_panel(_panel(_series(), 5, "School growth (unique bytes per day)", (0, 20, 12, 8),
                        [(f"deriv({SCHOOL_UNIQUE}[1d]) * 86400", "{{school}}")], "decbytes"))
    d.with_panel(_panel(_series(), 6, "Other buckets (apportioned)", (12, 20, 12, 8),
                        [('moodle_storage_apportioned_bytes{bucket!="school"}', "{{bucket}}")], "decbytes"))
    d.with_panel(_panel(_series(), 7, "Orphans and missing contents", (0, 28, 12, 8),
                        [("moodle_storage_orphan_bytes", "orphan bytes"),
                         ("moodle_storage_missing_bytes", "missing bytes"),
                         ("moodle_storage_trashdir_bytes", "trashdir")], "decbytes"))
    d.with_panel(_panel(_stat(), 8, "Exporter health", (12, 28, 12, 8),
                        [("moodleops_exporter_up", "last scan ok"),
                         ("moodleops_exporter_stale", "stale"),
                         ("time() - moodleops_exporter_last_success_timestamp_seconds", "age of data (s)"),
                         ("moodleops_exporter_scan_duration_seconds", "scan duration (s)"),
                         ("increase(moodleops_exporter_scan_errors_total[1d])", "errors (1 d)")], "short"))
    return d


def health() -> gd.Dashboard:
    d = _dashboard("moodle-health", "Moodle health", ["health"], "now-24h", "1m")
    d.with_panel(_panel(_stat().thresholds(_thresholds((None, "green"), (900, "red"))), 1,
                        "Cron lag", (0, 0, 6, 6),
                        [("max(moodle_cron_lag_seconds)", "since cron last started")], "s"))
    d.with_panel(_panel(_stat(), 2, "Maintenance mode", (6, 0, 6, 6),
                        [("max by (mode) (moodle_maintenance_enabled)", "{{mode}}")], "bool_on_off"))
    d.with_panel(_panel(_stat(), 3, "Pins not applied", (12, 0, 6, 6),
                        [("sum(moodle_pin_not_applied)", "components")], "short"))
    d.with_panel(_panel(_stat(), 4, "Active sessions", (18, 0, 6, 6),
                        [("sum(moodle_sessions_active)", "sessions")], "short"))
    d.with_panel(_panel(_series(), 5, "Users online per school (last access within 5 min)",
                        (0, 6, 12, 9), [("sum by (school) (moodle_users_online)", "{{school}}")], "short"))
    d.with_panel(_panel(_series(), 6, "Ad-hoc task queue", (12, 6, 12, 9),
                        [("sum(moodle_adhoc_tasks_queued)", "queued"),
                         ("sum(moodle_adhoc_tasks_failing)", "failing"),
                         ("max(moodle_adhoc_task_oldest_age_seconds) / 60", "oldest (min)")], "short"))
    d.with_panel(_panel(_table(), 7, "Scheduled tasks with the longest fail delay (0: fine)", (0, 15, 12, 8),
                        [("topk(10, moodle_scheduled_task_fail_delay_seconds)", "{{task}}"),
                         ("moodle_scheduled_tasks_failing", "failing tasks")], "s"))
    d.with_panel(_panel(_table(), 8, "Versions served vs moodle.yml pins", (12, 15, 12, 8),
                        [("moodle_version_served", "served {{component}}"),
                         ("moodle_version_pinned", "pinned {{component}}"),
                         ("moodle_pin_not_applied", "not applied {{component}}")], "none"))
    d.with_panel(_panel(_series(), 9, "php-fpm processes and queue", (0, 23, 12, 8),
                        [("phpfpm_active_processes", "active"), ("phpfpm_idle_processes", "idle"),
                         ("phpfpm_listen_queue", "listen queue"),
                         ("increase(phpfpm_max_children_reached_total[1h])", "max children reached (1 h)")],
                        "short"))
    d.with_panel(_panel(_stat(), 10, "Exporter health", (12, 23, 12, 8),
                        [("moodleops_watch_up", "last read ok"), ("moodleops_watch_stale", "stale"),
                         ("moodleops_watch_read_duration_seconds", "read duration (s)"),
                         ("increase(moodleops_watch_read_errors_total[1d])", "errors (1 d)")], "short"))
    return d


def abuse() -> gd.Dashboard:
    d = _dashboard("moodle-abuse", "Moodle abuse signals per school", ["abuse", "security"], "now-24h", "1m")
    d.with_panel(_panel(_series(), 1, "Messages and notifications sent (last hour) per school",
                        (0, 0, 12, 9), [("sum by (school) (moodle_messages_sent_1h)", "{{school}}")], "short"))
    d.with_panel(_panel(_table(), 2, "Top senders (last hour) vs mass-mailing threshold", (12, 0, 12, 9),
                        [("topk(20, moodle_top_sender_messages_sent_1h)", "{{school}} {{username}}"),
                         ("max(moodle_mass_mailing_threshold_per_hour)", "threshold")], "short"))
    d.with_panel(_panel(_series(), 3, "Failed logins (10 min) per school", (0, 9, 12, 9),
                        [("sum by (school) (moodle_failed_logins_10m)", "{{school}}"),
                         ("max(moodle_failed_logins_burst_threshold)", "burst threshold")], "short"))
    d.with_panel(_panel(_series(), 4, "Failed logins (10 min) per source address class", (12, 9, 12, 9),
                        [("sum by (source) (moodle_failed_logins_10m)", "{{source}}")], "short"))
    d.with_panel(_panel(_stat(), 5, "Site administrators", (0, 18, 8, 6),
                        [("max(moodle_site_admins)", "site admins"),
                         ("count(moodle_new_site_admin) or vector(0)", "new (24 h)")], "short"))
    d.with_panel(_panel(_table(), 6, "New watched-role assignments (24 h)", (8, 18, 16, 6),
                        [("moodle_role_assignments_new_24h", "{{role}} {{school}}")], "short"))
    return d


DASHBOARDS: dict[str, Callable[[], gd.Dashboard]] = {
    "moodle_storage": storage, "moodle_health": health, "moodle_abuse": abuse}


def to_json(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder))
    return doc


def render(name: str = "moodle_storage") -> str:
    return json.dumps(to_json(name), indent=2, sort_keys=True) + "\n"


def path_of(name: str) -> Path:
    return DIR / f"{name}.json"


def main() -> int:
    DIR.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        path_of(name).write_text(render(name), encoding="utf-8")
        print(f"wrote {path_of(name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
