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
