"""The Grafana dashboard of the storage exporter, as code.

`python -m moodleops.exporters.dashboard` rewrites exporters/dashboards/
moodle_storage.json (committed; provisioned as a dashboard file). Every
expression uses only metrics the exporter emits (a test checks it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "moodle_storage.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

SCHOOL_UNIQUE = 'moodle_storage_unique_bytes{bucket="school"}'
SCHOOL_RATIO = (f"{SCHOOL_UNIQUE} / on (school) group_left "
                "max by (school) (moodle_storage_school_alert_threshold_bytes)")
POOL_RATIO = "moodle_storage_distinct_bytes / moodle_storage_pool_size_bytes"


def _panel(pid: int, title: str, kind: str, grid: tuple[int, int, int, int], targets: list[tuple[str, str]],
           unit: str = "decbytes", **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "id": pid, "title": title, "type": kind, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend, "datasource": DS}
                    for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []},
        **extra,
    }


def build() -> dict[str, Any]:
    thresholds = {"mode": "absolute", "steps": [
        {"color": "green", "value": None}, {"color": "orange", "value": 0.8}, {"color": "red", "value": 0.9}]}
    panels = [
        _panel(1, "Pool used (distinct content / agreement pool)", "gauge", (0, 0, 6, 8),
               [(POOL_RATIO, "pool")], unit="percentunit",
               defaults={"min": 0, "max": 1, "thresholds": thresholds}),
        _panel(2, "Pool: content vs agreement size vs filesystem", "timeseries", (6, 0, 18, 8),
               [("moodle_storage_distinct_bytes", "distinct content"),
                ("moodle_storage_pool_size_bytes", "agreement pool"),
                ("moodle_storage_filesystem_used_bytes", "filesystem used"),
                ("moodle_storage_filesystem_size_bytes", "filesystem size"),
                ("predict_linear(moodle_storage_distinct_bytes[14d], 90 * 86400)", "in 90 days (trend)")]),
        _panel(3, "Schools: usage vs alert threshold", "bargauge", (0, 8, 12, 12),
               [(SCHOOL_RATIO, "{{school}}")],
               unit="percentunit", defaults={"min": 0, "max": 1, "thresholds": thresholds},
               options={"orientation": "horizontal", "displayMode": "gradient"}),
        _panel(4, "Top schools (unique bytes)", "table", (12, 8, 12, 12),
               [(f"topk(20, {SCHOOL_UNIQUE})", "{{school}}"),
                ("moodle_storage_school_alert_threshold_bytes", "threshold {{school}}")],
               options={"showHeader": True}),
        _panel(5, "School growth (unique bytes per day)", "timeseries", (0, 20, 12, 8),
               [(f"deriv({SCHOOL_UNIQUE}[1d]) * 86400", "{{school}}")], unit="decbytes"),
        _panel(6, "Other buckets (apportioned)", "timeseries", (12, 20, 12, 8),
               [('moodle_storage_apportioned_bytes{bucket!="school"}', "{{bucket}}")]),
        _panel(7, "Orphans and missing contents", "timeseries", (0, 28, 12, 8),
               [("moodle_storage_orphan_bytes", "orphan bytes"),
                ("moodle_storage_missing_bytes", "missing bytes"),
                ("moodle_storage_trashdir_bytes", "trashdir")]),
        _panel(8, "Exporter health", "stat", (12, 28, 12, 8),
               [("moodleops_exporter_up", "last scan ok"),
                ("moodleops_exporter_stale", "stale"),
                ("time() - moodleops_exporter_last_success_timestamp_seconds", "age of data (s)"),
                ("moodleops_exporter_scan_duration_seconds", "scan duration (s)"),
                ("increase(moodleops_exporter_scan_errors_total[1d])", "errors (1 d)")], unit="short"),
    ]
    return {
        "uid": "moodle-storage", "title": "Moodle storage per school", "schemaVersion": 39, "version": 1,
        "editable": False, "tags": ["moodle", "storage", "moodleops"], "time": {"from": "now-30d", "to": "now"},
        "refresh": "5m",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
