"""History sources: recorded files, a live /metrics scrape over HTTP, a
Prometheus query_range API over HTTP (loopback servers made by the test)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from capacity_conftest_helpers import run_cli
from capacity_synthetic import epoch
from moodleops.capacity import record
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.history import (
    POOL,
    Sample,
    append_snapshots,
    group,
    pool_of,
    read_snapshots,
    samples_from_exposition,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from moodleops.inventory import load_inventory


class FakeExporter:
    """Collector with the storage exporter's metric shapes: per-bucket,
    per-school gauges (only bucket="school" rows are schools) and the pool."""

    def __init__(self, schools: dict[str, float]) -> None:
        self.schools = dict(schools)

    def collect(self):  # type: ignore[no-untyped-def]
        g = GaugeMetricFamily("moodle_storage_apportioned_bytes", "share", labels=["bucket", "school"])
        for code, value in self.schools.items():
            g.add_metric(["school", code], value)
        g.add_metric(["users", ""], 7e9)          # not a school: must be ignored
        yield g
        yield GaugeMetricFamily("moodle_storage_distinct_bytes", "pool", value=sum(self.schools.values()) + 7e9)


@pytest.fixture
def exporter() -> Iterator[tuple[str, FakeExporter]]:
    collector = FakeExporter({"ifsi_millau": 10e9, "ifms_lot": 20e9})
    registry = CollectorRegistry()
    registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", collector
    finally:
        server.shutdown()
        server.server_close()


def test_recorded_scrapes_of_a_live_exporter_forecast(exporter, params, tmp_path: Path) -> None:
    """60 daily scrapes of a live /metrics endpoint (values moving as a school's
    content grows), recorded to CSV, then forecast from the file by the CLI."""
    url, collector = exporter
    hist = tmp_path / "history.csv"
    first = date(2025, 9, 1)
    for day in range(60):
        collector.schools = {"ifsi_millau": 10e9 + 0.5e9 * day, "ifms_lot": 20e9 + 0.1e9 * day}
        append_snapshots(hist, record.from_metrics(url, params.forecast, now=epoch(first + timedelta(days=day))))
    got = group(read_snapshots(hist))
    assert set(got) == {"ifsi_millau", "ifms_lot", POOL}
    assert got["ifsi_millau"].values[-1] == 10e9 + 0.5e9 * 59
    assert got[POOL].values[0] == 37e9             # the exporter's pool, users' files included
    code, out, err = run_cli("capacity", "forecast", "--history", str(hist), "--format", "json")
    assert code == 1, err                          # millau reaches 41 GB within the agreement
    doc = json.loads(out)
    millau = next(f for f in doc["forecasts"] if f["name"] == "ifsi_millau")
    # 10 GB + 0.5 GB/day reaches 41 GB on day 62 (evaluated at noon: 10 + 0.5 x 62.5 >= 41).
    assert millau["crossing"]["expected"] == (first + timedelta(days=62)).isoformat()
    pool = next(f for f in doc["forecasts"] if f["name"] == POOL)
    assert doc["pool_is_sum_of_schools"] is False and pool["trend_bytes_per_year"] == pytest.approx(
        0.6e9 * 365.25, rel=1e-6)
    assert set(doc["skipped"]) == {s.code for s in load_inventory("local").schools} - {"ifsi_millau", "ifms_lot"}


def test_record_cli_from_a_live_exporter(exporter, tmp_path: Path) -> None:
    url, _ = exporter
    out = tmp_path / "h.csv"
    code, stdout, err = run_cli("capacity", "record", "--from-metrics", url, "--out", str(out))
    assert code == 0, err
    assert "recorded 3 sample(s)" in stdout
    assert {s.school for s in read_snapshots(out)} == {"ifsi_millau", "ifms_lot", POOL}


def test_scrape_without_the_metric_is_a_clear_error(tmp_path: Path, params) -> None:
    text = tmp_path / "metrics.txt"
    text.write_text("# TYPE other gauge\nother 1\n")
    with pytest.raises(CapacityError, match=r'no sample of moodle_storage_apportioned_bytes\{bucket="school"\}'):
        record.from_metrics(str(text), params.forecast)


def test_exposition_parsing_filters_labels() -> None:
    text = ('# TYPE m gauge\nm{bucket="school",school="a"} 5\nm{bucket="users",school=""} 9\n'
            'm{bucket="school",school="b"} 7 1700000000000\n')
    got = samples_from_exposition(text, "m", "school", now=1.0, match={"bucket": "school"})
    assert got == [Sample(1.0, "a", 5.0), Sample(1700000000.0, "b", 7.0)]


def test_prometheus_query_range_over_http(params, tmp_path: Path) -> None:
    """A loopback stand-in for Prometheus' HTTP API: checks the query we send
    and answers a matrix; the CLI forecasts from it."""
    asked: list[dict[str, list[str]]] = []
    start = datetime(2025, 9, 1, tzinfo=UTC).timestamp()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            q = parse_qs(urlparse(self.path).query)
            asked.append(q)
            if urlparse(self.path).path != "/api/v1/query_range":
                self.send_response(404)
                self.end_headers()
                return
            days = np.arange(90)
            if q["query"][0].startswith("sum by"):
                result = [{"metric": {"school": "ifms_albi"},
                           "values": [[start + d * 86400, str(30e9 + 0.1e9 * d)] for d in days]}]
            else:
                result = [{"metric": {}, "values": [[start + d * 86400, str(300e9 + 1e9 * d)] for d in days]}]
            body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, out, err = run_cli("capacity", "forecast", "--prometheus", url, "--school", "ifms_albi",
                                 "--format", "json")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1, err
    assert asked[0]["query"] == ['sum by (school) (moodle_storage_apportioned_bytes{bucket="school"})']
    assert asked[0]["step"] == [str(params.forecast.range_step_seconds)]
    assert asked[1]["query"] == ["max(moodle_storage_distinct_bytes)"]
    doc = json.loads(out)
    albi = next(f for f in doc["forecasts"] if f["name"] == "ifms_albi")
    # 30 GB + 0.1 GB/day from 2025-09-01; last sample day 89 (38.9 GB): 41 GB on day 110.
    assert albi["crossing"]["expected"] == (date(2025, 9, 1) + timedelta(days=110)).isoformat()
    pool = next(f for f in doc["forecasts"] if f["name"] == POOL)
    assert pool["extra_crossings"]["warning 80%"]["expected"] == (date(2025, 9, 1) + timedelta(days=100)).isoformat()


def test_unreachable_prometheus_is_one_line(params) -> None:
    code, _out, err = run_cli("capacity", "forecast", "--prometheus", "http://127.0.0.1:9/")
    # A dependency's fault (4 in the exit table), not bad input.
    assert code == 4 and err.startswith("moodleops: error: Prometheus http://127.0.0.1:9/: connection refused")
    assert err.count("\n") == 1


def test_pool_of_carries_values_forward_and_starts_late_schools_at_zero() -> None:
    s = group([Sample(epoch(date(2025, 1, 1)), "a", 10), Sample(epoch(date(2025, 1, 3)), "a", 12),
               Sample(epoch(date(2025, 1, 2)), "b", 5)])
    p = pool_of(s)
    assert list(p.values) == [10, 15, 17]


@pytest.mark.parametrize(("content", "message"), [
    ("when,who,size\n1,a,2\n", "CSV header"),
    ("timestamp,school,bytes\nyesterday,a,2\n", "timestamp 'yesterday' is not valid"),
    ("timestamp,school,bytes\n2025-01-01,a,-5\n", "bytes '-5' is not valid"),
    ("timestamp,school,bytes\n2025-01-01,,5\n", "empty school"),
])
def test_bad_snapshot_files_name_the_bad_value(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(content)
    with pytest.raises(CapacityError, match=message):
        read_snapshots(path)


def test_json_snapshots_and_saved_prometheus_answers(tmp_path: Path) -> None:
    listing = tmp_path / "h.json"
    listing.write_text(json.dumps([{"timestamp": "2025-01-01T00:00:00Z", "school": "a", "bytes": 3}]))
    assert read_snapshots(listing) == [Sample(epoch(date(2025, 1, 1)), "a", 3.0)]
    failed = tmp_path / "p.json"
    failed.write_text(json.dumps({"status": "error", "error": "parse error at char 3"}))
    with pytest.raises(CapacityError, match="not a successful Prometheus query_range answer .parse error"):
        read_snapshots(failed)
