"""SLO verdicts from Locust's CSV statistics, both ways."""

from __future__ import annotations

import csv
from pathlib import Path

from moodleops.loadtests.model import Slo
from moodleops.loadtests.summary import (
    INCONCLUSIVE,
    SCHEMA,
    build_summary,
    missing_pages,
    read_requests,
    read_stats,
    status,
    verdict,
    windows,
)

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
    assert summary["schema"] == SCHEMA and summary["verdict"] == {
        "status": "PASS", "pass": True, "violations": [], "missing": []}
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


def write_requests(path: Path, start: float, rows: list[tuple[float, str, float, int]]) -> Path:
    """rows: (seconds after start, page, ms, ok) as the locustfile records them."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# start {start}\n")
        fh.writelines(f"{start + t},{name},{ms},{ok}\n" for t, name, ms, ok in rows)
    return path


def test_a_page_type_that_never_ran_makes_the_verdict_inconclusive(tmp_path: Path) -> None:
    start = 1_800_000_000.0
    rows = [(10 + i, "login:post", 300.0, 1) for i in range(50)] + [(12 + i, "course", 400.0, 1) for i in range(50)]
    _, samples = read_requests(write_requests(tmp_path / "r.csv", start, rows))
    win = windows(start, samples, 100, warmup_s=5, window_s=20)
    expected = {"login:post": 0.4, "course": 0.4, "quiz:submit": 0.1, "assign:upload": 0.1}
    missing = missing_pages(expected, win.steady_pages, minimum=3)
    assert [(m.page, m.requests) for m in missing] == [("assign:upload", 0), ("quiz:submit", 0)]
    violations = verdict(win.steady_pages, win.steady_total, SLO, peak=win.peak_pages)
    assert violations == [] and status(violations, missing) == INCONCLUSIVE
    summary = build_summary(pages=win.steady_pages, total=win.steady_total, slo=SLO, violations=violations,
                            missing=missing, win=win, run={"shape": "weekday"})
    assert summary["verdict"]["status"] == "INCONCLUSIVE" and summary["verdict"]["pass"] is False
    # Two quiz submits are not enough either; three are.
    rows += [(40, "quiz:submit", 900.0, 1), (41, "quiz:submit", 900.0, 1), (42, "assign:upload", 800.0, 1)] * 1
    _, samples = read_requests(write_requests(tmp_path / "r.csv", start, rows))
    win = windows(start, samples, 100, warmup_s=5, window_s=20)
    assert {m.page for m in missing_pages(expected, win.steady_pages, 3)} == {"quiz:submit", "assign:upload"}
    rows += [(43, "quiz:submit", 900.0, 1), (44, "assign:upload", 800.0, 1), (45, "assign:upload", 800.0, 1)]
    _, samples = read_requests(write_requests(tmp_path / "r.csv", start, rows))
    win = windows(start, samples, 100, warmup_s=5, window_s=20)
    assert missing_pages(expected, win.steady_pages, 3) == []


def test_warmup_is_left_out_and_the_peak_windows_p95_is_judged(tmp_path: Path) -> None:
    start = 1_800_000_000.0
    # Warm-up (first 10 s): cold caches, 9 s courses. Then a calm part and a busy, slow minute.
    rows = [(i * 0.5, "course", 9000.0, 1) for i in range(20)]
    rows += [(10 + i, "course", 500.0, 1) for i in range(100)]                  # 1 req/s, fast
    rows += [(120 + i * 0.1, "course", 2800.0 if i % 16 else 4000.0, 1) for i in range(300)]  # 10 req/s, 6% slow
    _, samples = read_requests(write_requests(tmp_path / "r.csv", start, rows))
    win = windows(start, samples, 150, warmup_s=10, window_s=30)
    assert win.steady_total.requests == 400                       # the warm-up's 20 are gone
    assert 115 <= win.peak_from_s <= 121 and win.peak_total.requests >= 290
    # Whole steady part: p95 2800 ms (fine); the peak window: 4000 ms > 3000 ms.
    assert win.steady_pages["course"].p95_ms <= 3000 < win.peak_pages["course"].p95_ms
    found = verdict(win.steady_pages, win.steady_total, SLO, peak=win.peak_pages)
    assert [(v.page, v.metric, v.scope) for v in found] == [("course", "p95", "peak_window")]
    assert verdict(win.steady_pages, win.steady_total, SLO) == []


def test_figures_per_web_node_from_the_load_balancers_header(tmp_path: Path) -> None:
    """requests.csv's fifth column (the web node lb1 named) gives per-node figures
    in the steady part and the peak window; rows without it (one node, no load
    balancer, or an older worker's four columns) count in the totals only."""
    start = 1_800_000_000.0
    path = tmp_path / "r.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# start {start}\n")
        fh.writelines(f"{start + 10 + i * 0.5},course,{200.0 if i % 2 else 800.0},1,{'web1' if i % 2 else 'web2'}\n"
                      for i in range(80))
        fh.writelines(f"{start + 12 + i},course,300.0,1\n" for i in range(10))
    _, samples = read_requests(path)
    win = windows(start, samples, 60, warmup_s=5, window_s=20)
    assert set(win.steady_nodes) == {"web1", "web2"}
    assert win.steady_nodes["web1"].requests == win.steady_nodes["web2"].requests == 40
    assert win.steady_total.requests == 90
    assert win.steady_nodes["web1"].p95_ms == 200.0 and win.steady_nodes["web2"].p95_ms == 800.0
    assert sum(n.requests for n in win.peak_nodes.values()) <= win.peak_total.requests
    summary = build_summary(pages=win.steady_pages, total=win.steady_total, slo=SLO, violations=[], win=win,
                            run={"shape": "exam"})
    assert summary["steady"]["nodes"]["web2"]["p95_ms"] == 800.0
    assert set(summary["peak_window"]["nodes"]) == {"web1", "web2"}
