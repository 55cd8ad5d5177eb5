"""The command line: man-page help, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from capacity_conftest_helpers import run_cli


@pytest.mark.parametrize("command", ["record", "forecast", "sizing", "review", "billing"])
def test_help_reads_like_a_man_page(command: str) -> None:
    code, out, _ = run_cli("capacity", command, "--help")
    assert code == 0
    assert "exit status:" in out and "examples:" in out and f"moodleops capacity {command}" in out


def _history(tmp_path: Path) -> Path:
    path = tmp_path / "h.csv"
    rows = ["timestamp,school,bytes"] + [f"2025-10-{d:02d}T00:00:00+00:00,ifsi_millau,{10_000_000_000 + d * 10**8}"
                                         for d in range(1, 31)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(("argv", "message"), [
    (["--school", "nowhere"], "code: 'nowhere' is not valid (one of: ifsi_millau,"),
    (["--double-growth", "nowhere"], "code: 'nowhere' is not valid"),
    (["--until", "2030-01-01"], "--until 2030-01-01 is outside the agreement (2024-09-01 to 2029-08-31)"),
    (["--at", "2024-06-01"], "--at 2024-06-01 is outside the agreement"),
    (["--join", "new:5GB"], "--join 'new:5GB' is not valid (CODE:SIZE:GROWTH_PER_YEAR"),
    (["--join", "new:5GB:1GB:2031-01-01"], "--join new: date 2031-01-01 is outside the agreement"),
    (["--join", "ifsi_millau:5GB:1GB"], "already a school of the inventory"),
    (["--school", "ifms_lot"], "no history for school 'ifms_lot'"),
])
def test_forecast_bad_input(tmp_path: Path, argv: list[str], message: str) -> None:
    code, out, err = run_cli("capacity", "forecast", "--history", str(_history(tmp_path)), *argv)
    assert code == 2
    assert err.startswith("moodleops: error: ") and message in err and err.count("\n") == 1
    assert out == ""


def test_forecast_empty_and_missing_history(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("timestamp,school,bytes\n")
    code, _, err = run_cli("capacity", "forecast", "--history", str(empty))
    assert code == 2 and "history from " in err and "is empty: no samples" in err
    code, _, err = run_cli("capacity", "forecast", "--history", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv does not exist" in err
    code, _, err = run_cli("capacity", "forecast")
    assert code == 2 and "no history given" in err


def test_forecast_ok_and_scenarios(tmp_path: Path) -> None:
    code, out, err = run_cli("capacity", "forecast", "--history", str(_history(tmp_path)), "--school", "ifsi_millau",
                             "--double-growth", "ifsi_millau", "--join", "ifsi_new:20GB:10GB:2026-09-01",
                             "--at", "2026-01-01")
    assert code == 1, err       # millau (10 GB + 0.1 GB/day) reaches 41 GB well within the agreement
    lines = out.splitlines()
    base = next(ln for ln in lines if ln.startswith("ifsi_millau ") and "*" not in ln)
    doubled = next(ln for ln in lines if ln.startswith("ifsi_millau *"))
    # 13 GB on 2025-10-30, 0.1 GB/day: 41 GB on day 280 after it (2026-08-06), 140 with the doubled growth.
    assert "2026-08-06" in base and "2026-03-19" in doubled
    assert "pool *" in out and "ifsi_new joins 2026-09-01: 20 GB + 10 GB/year" in out
