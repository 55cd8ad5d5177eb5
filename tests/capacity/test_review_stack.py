"""Live measurements against the real local Moodle: `record` from the database
and the yearly review of a test school, then the same review offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from capacity_conftest_helpers import run_cli
from capacity_synthetic import samples, series
from moodleops.capacity.history import append_snapshots, read_snapshots

pytestmark = pytest.mark.stack


def test_record_from_database_measures_each_test_school(billing_world, tmp_path: Path) -> None:
    out = tmp_path / "history.csv"
    code, _stdout, err = run_cli("-i", str(billing_world.inv.env_dir), "capacity", "record", "--out", str(out))
    assert code == 0, err
    got = {s.school: s.bytes for s in read_snapshots(out)}
    a, b, c = billing_world.codes
    assert got == {a: billing_world.course_bytes, b: 0, c: 0}
    # A second run appends (a history grows one line per school per run).
    assert run_cli("-i", str(billing_world.inv.env_dir), "capacity", "record", "--out", str(out))[0] == 0
    assert len(read_snapshots(out)) == 6


def test_live_review_then_offline_review(billing_world, tmp_path: Path) -> None:
    a = billing_world.codes[0]
    env = str(billing_world.inv.env_dir)
    # 400 days of history ending yesterday, growing 30 GB a year from 5 GB:
    # the 41 GB threshold is crossed within the agreement.
    start = datetime.now(UTC).date() - timedelta(days=400)
    hist = tmp_path / "history.csv"
    append_snapshots(hist, samples(series(a, start, 400, lambda d: 5e9 + 30e9 / 365.25 * d
                                          + np.random.default_rng(1).normal(0, 2e7, len(d)))))
    live, data, offline = tmp_path / "live", tmp_path / "data", tmp_path / "offline"
    code, out, err = run_cli("-i", env, "capacity", "review", "--school", a, "--history", str(hist),
                             "--out", str(live), "--save-data", str(data))
    assert code == 0, err
    [report] = list(live.glob(f"review-{a}-*.html"))
    assert str(report) in out
    html = report.read_text()
    assert billing_world.course in html                       # largest courses
    assert "<td>accounts in the school</td><td>4</td>" in html   # a1, a2, the two-school student, the trainer
    assert "<td>suspended</td><td>0</td>" in html
    assert "<td>account type: student</td><td>3</td>" in html
    assert "<td>account type: trainer</td><td>1</td>" in html
    assert "<svg" in html and 'class="forecast"' in html and "alert 41 GB" in html
    assert "Alert threshold reached".lower() in html.lower()
    # Offline, from the saved data: the same report.
    code, _out, err = run_cli("-i", env, "capacity", "review", "--school", a, "--history", str(hist),
                             "--out", str(offline), "--data", str(data / f"review-data-{a}.json"))
    assert code == 0, err
    assert (offline / report.name).read_text() == html
