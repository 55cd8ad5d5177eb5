"""Sizing straight from `moodleops loadtest run` summaries (the load model's own
output), one point per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moodleops.capacity import sizing
from moodleops.capacity.errors import CapacityError
from moodleops.loadtests.model import Slo
from moodleops.loadtests.summary import PageStats, build_summary

from moodleops.cli import main


def _run_summary(path: Path, users: int, rps: float, p95: float) -> Path:
    total = PageStats(requests=int(rps * 60), failures=0, rps=rps, p50_ms=p95 / 3, p95_ms=p95, p99_ms=p95 * 1.5,
                      avg_ms=p95 / 2, max_ms=p95 * 2)
    doc = build_summary(pages={"course": total}, total=total,
                        slo=Slo(error_rate_max=0.01, min_requests_for_p95=20, p95_ms={"default": 3000}),
                        violations=[], run={"users": users, "shape": "exam",
                                            "model": {"peak_concurrent": 140.0, "peak_pages_per_s": 7.0}})
    path.write_text(json.dumps(doc))
    return path


def test_run_summaries_make_a_sizing_curve(tmp_path: Path) -> None:
    runs = [_run_summary(tmp_path / f"u{u}.json", u, rps, p95)
            for u, rps, p95 in ((50, 18.4, 6100.0), (10, 4.7, 1600.0), (25, 10.4, 1900.0))]
    load = sizing.read_any(runs, php_fpm_workers=8)
    assert [(p.users, p.p95_ms) for p in load.p95_by_users] == [(10, 1600), (25, 1900), (50, 6100)]
    assert load.throughput_rps_per_worker == pytest.approx(18.4 / 8)
    assert load.requests_per_user_per_minute == pytest.approx(7.0 / 140.0 * 60)


def test_cli_sizes_from_run_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [str(_run_summary(tmp_path / f"u{u}.json", u, rps, p95))
            for u, rps, p95 in ((10, 4.7, 400.0), (50, 18.4, 1200.0))]
    assert main(["capacity", "sizing", "--loadtest", *runs, "--php-fpm-workers", "8", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["workers"] >= out["workers_needed"] >= 1 and out["web_nodes"] >= 1


def test_run_summary_without_requests_or_workers_is_refused(tmp_path: Path) -> None:
    run = _run_summary(tmp_path / "u10.json", 10, 0.0, 1600.0)
    with pytest.raises(CapacityError, match="no request rate measured"):
        sizing.from_runs([run], 8)
    with pytest.raises(CapacityError, match="php-fpm workers 0 is not valid"):
        sizing.from_runs([run], 0)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else/1"}))
    with pytest.raises(CapacityError, match="schema 'something-else/1' is not valid"):
        sizing.read_any([other], 8)


def test_peak_window_and_sampled_workers_per_node(tmp_path: Path) -> None:
    """A run on two web nodes: throughput per worker is the peak window's rate
    over the workers both pools held then, and each node's figures are noted."""
    path = _run_summary(tmp_path / "two.json", 60, 10.0, 900.0)
    doc = json.loads(path.read_text())
    doc["peak_window"] = {"from_s": 20.0, "to_s": 40.0, "totals": {"rps": 30.0, "p95_ms": 1800.0}}
    doc["server"] = {"samples": [
        {"t": 10.0, "cpu": {"web1": 0.2, "web2": 0.2}, "php_fpm": {"web1": {"total": 20}, "web2": {"total": 20}}},
        {"t": 25.0, "cpu": {"web1": 0.95, "web2": 0.7}, "php_fpm": {"web1": {"total": 6}, "web2": {"total": 4}}},
        {"t": 35.0, "cpu": {"web1": 0.9, "web2": 0.8}, "php_fpm": {"web1": {"total": 5}, "web2": {"total": 6}}}]}
    path.write_text(json.dumps(doc))
    load = sizing.from_runs([path], php_fpm_workers=None)
    assert load.php_fpm_workers == 12                       # 6 + 6 in the window, not the 40 outside it
    assert load.throughput_rps_per_worker == pytest.approx(30.0 / 12)
    assert [(p.users, p.p95_ms) for p in load.p95_by_users] == [(60, 1800)]
    assert any("2 web nodes" in n and "web1 6 workers / CPU peak 95%" in n for n in load.notes)
    # Without samples and without a worker count there is nothing to divide by.
    with pytest.raises(CapacityError, match="no php-fpm samples"):
        sizing.from_runs([_run_summary(tmp_path / "bare.json", 10, 4.0, 500.0)], None)


def test_nodes_named_by_the_load_balancer_count_their_workers_and_are_noted(tmp_path: Path) -> None:
    """A run through the load balancer without php-fpm samples (the rehearsal
    from the operator's side): the given workers are per node, so two nodes
    that answered hold twice as many; each node's peak-window figures are noted."""
    path = _run_summary(tmp_path / "lb.json", 20, 10.0, 900.0)
    doc = json.loads(path.read_text())
    doc["peak_window"] = {"from_s": 5.0, "to_s": 15.0, "totals": {"rps": 16.0, "p95_ms": 800.0}, "nodes": {
        "web1": {"requests": 90, "failures": 0, "rps": 9.0, "p50_ms": 100.0, "p95_ms": 700.0, "p99_ms": 900.0},
        "web2": {"requests": 70, "failures": 0, "rps": 7.0, "p50_ms": 110.0, "p95_ms": 850.0, "p99_ms": 990.0}}}
    path.write_text(json.dumps(doc))
    load = sizing.from_runs([path], php_fpm_workers=8)
    assert load.php_fpm_workers == 16
    assert load.throughput_rps_per_worker == pytest.approx(16.0 / 16)
    assert any("web1 9.00 req/s, p95 700 ms, 90 requests" in n and "web2 7.00 req/s, p95 850 ms" in n
               for n in load.notes), load.notes
    assert any("8 per node x 2 node(s)" in n for n in load.notes), load.notes
    doc["peak_window"]["nodes"]["web2"] = {"rps": "fast"}
    path.write_text(json.dumps(doc))
    with pytest.raises(CapacityError, match="peak_window.nodes"):
        sizing.from_runs([path], php_fpm_workers=8)
