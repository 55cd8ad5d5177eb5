"""SLO verdicts from Locust's CSV statistics, both ways."""

from __future__ import annotations

import csv
from pathlib import Path

from moodleops.loadtests.model import Slo
from moodleops.loadtests.summary import SCHEMA, build_summary, read_stats, verdict

HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
          "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
          "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
SLO = Slo(error_rate_max=0.01, min_requests_for_p95=1,
          p95_ms={"default": 3000, "login": 2000, "quiz:start": 5000, "ajax": 1500})


def write_stats(path: Path, rows: list[tuple[str, str, int, int, float]]) -> Path:
    """rows: (type, name, requests, failures, p95)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        total_req = sum(r[2] for r in rows)
        total_fail = sum(r[3] for r in rows)
        for typ, name, req, fail, p95 in rows:
            w.writerow([typ, name, req, fail, p95 / 2, p95 / 2, 1, p95 * 1.2, 1000, req / 60, fail / 60,
                        p95 / 2, p95 / 2, p95 / 2, p95 / 2, p95 * 0.9, p95, p95, p95 * 1.1, p95 * 1.2, p95 * 1.2,
                        p95 * 1.2])
        w.writerow(["", "Aggregated", total_req, total_fail, 100, 100, 1, 9000, 1000, total_req / 60,
                    total_fail / 60, 100, 100, 100, 100, 200, max(r[4] for r in rows), 0, 0, 0, 0, 0])
    return path


def test_holding_run_passes(tmp_path: Path) -> None:
    pages, total = read_stats(write_stats(tmp_path / "s.csv", [
        ("POST", "login:post", 100, 0, 1900), ("POST", "quiz:start", 50, 0, 4800),
        ("POST", "ajax:core_calendar_get_action_events_by_timesort", 100, 1, 900)]))
    assert verdict(pages, total, SLO) == []
    summary = build_summary(pages=pages, total=total, slo=SLO, violations=[], run={"shape": "exam", "users": 50})
    assert summary["schema"] == SCHEMA and summary["verdict"] == {"pass": True, "violations": []}
    assert summary["pages"]["quiz:start"]["p95_ms"] == 4800
    assert summary["slo"]["p95_ms"]["login:post"] == 2000      # family fallback
    assert summary["totals"]["requests"] == 250


def test_slow_page_and_errors_fail(tmp_path: Path) -> None:
    pages, total = read_stats(write_stats(tmp_path / "s.csv", [
        ("POST", "login:post", 100, 0, 2100), ("GET", "course", 100, 3, 2900),
        ("POST", "ajax:core_course_get_enrolled_courses_by_timeline_classification", 10, 0, 1600)]))
    found = {(v.page, v.metric) for v in verdict(pages, total, SLO)}
    assert found == {("login:post", "p95"), ("all", "error_rate"),
                     ("ajax:core_course_get_enrolled_courses_by_timeline_classification", "p95")}
    # 3 failures in 210 requests = 1.4% > 1%.
    assert total.error_rate == 3 / 210


def test_a_run_without_requests_fails(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(",".join(HEADER) + "\n,Aggregated,0,0" + ",0" * 18 + "\n", encoding="utf-8")
    pages, total = read_stats(path)
    assert [v.metric for v in verdict(pages, total, SLO)] == ["requests"]
