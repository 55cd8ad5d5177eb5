"""Forecasts on synthetic histories whose answers are known."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, timedelta

import numpy as np
import pytest
from capacity_synthetic import academic, linear, series
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.forecast import crossing, fit, joining_school, project
from moodleops.capacity.history import Series

START = date(2024, 9, 1)
END = date(2029, 8, 31)
GB = 1e9


def test_linear_growth_crosses_on_the_known_day(params) -> None:
    # 10 GB + 20 MB/day reaches 41 GB after exactly 1550 days.
    f = fit(series("s", START, 200, linear(10 * GB, 20e6)), params.forecast)
    assert f.slope_per_year == pytest.approx(20e6 * 365.25, rel=1e-6)
    assert f.steps == () and f.harmonics == 0
    c = crossing(project(f, END), 41 * GB)
    assert c.expected == START + timedelta(days=1550)
    # No noise: the band is a day wide at most.
    assert c.earliest is not None and c.latest is not None
    assert (c.latest - c.earliest).days <= 1


def test_a_step_is_a_level_shift_not_a_steeper_slope(params) -> None:
    # A 5 GB bulk import on day 100: the slope stays 20 MB/day, the level jumps.
    s = series("s", START, 200, lambda d: 10 * GB + 20e6 * d + 5 * GB * (d >= 100))
    f = fit(s, params.forecast)
    assert len(f.steps) == 1
    assert f.slope_per_year == pytest.approx(20e6 * 365.25, rel=1e-6)
    # (41 - 15) GB at 20 MB/day: day 1300.
    assert crossing(project(f, END), 41 * GB).expected == START + timedelta(days=1300)
    # Without the step model the slope would be badly overestimated (the reason it exists).
    flat = dataclasses.replace(params.forecast, level_shift_threshold=1e12)
    assert fit(s, flat).slope_per_year > 1.5 * f.slope_per_year


def test_academic_year_seasonality_is_learnt_from_two_years(params) -> None:
    # Growth in bursts each autumn, 6 GB a year; two years of history.
    truth = academic(5 * GB, 6 * GB, START)
    s = series("s", START, 730, truth)
    f = fit(s, params.forecast)
    assert f.harmonics == params.forecast.seasonal_harmonics
    p = project(f, END)
    ahead = np.arange(730, 730 + 365)
    true_next_year = truth(ahead.astype(float))
    err_seasonal = np.mean(np.abs(p.mean[:365] - true_next_year))
    # The same history forced through a straight line misses the autumn bursts by far more.
    no_season = dataclasses.replace(params.forecast, seasonality_min_days=10_000)
    p_lin = project(fit(s, no_season), END)
    err_linear = np.mean(np.abs(p_lin.mean[:365] - true_next_year))
    # Mean error over the next academic year: under 2 % of a year's growth.
    assert err_seasonal < 0.02 * 6 * GB
    assert err_linear > 4 * err_seasonal
    # Less than a year of the same curve: no cycle is claimed.
    assert fit(series("s", START, 300, truth), params.forecast).harmonics == 0


@pytest.mark.parametrize("kind", ["noise", "random_walk"])
def test_band_is_honest_on_noisy_histories(params, kind: str) -> None:
    """Over many seeds, the 90 % band holds the true future value most of the time
    (measured coverage, with slack for 40 seeds), for plain measurement noise and
    for a random walk with drift (noise in the increments, as real uploads)."""
    hits = 0
    seeds = 40
    horizon = 180
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n = 300 + horizon
        d = np.arange(n, dtype=float)
        if kind == "noise":
            y = 10 * GB + 20e6 * d + rng.normal(0, 3e8, n)
        else:
            y = 10 * GB + np.cumsum(20e6 + rng.normal(0, 5e7, n))
        full = series("s", START, n, lambda _d, y=y: y)
        f = fit(Series("s", full.times[:300], full.values[:300]), params.forecast)
        mean, half = f.predict(full.times[-1:])
        hits += abs(y[-1] - mean[0]) <= half[0]
    assert hits / seeds >= 0.75


def test_noisy_crossing_band_holds_the_true_date(params) -> None:
    rng = np.random.default_rng(7)
    s = series("s", START, 300, lambda d: 10 * GB + 20e6 * d + rng.normal(0, 3e8, len(d)))
    c = crossing(project(fit(s, params.forecast), END), 41 * GB)
    truth = START + timedelta(days=1550)
    assert c.earliest is not None and c.earliest <= truth
    assert c.latest is None or truth <= c.latest
    assert c.expected is not None and abs((c.expected - truth).days) < 60


def test_doubling_growth_doubles_the_increment(params) -> None:
    f = fit(series("s", START, 200, linear(10 * GB, 20e6)), params.forecast)
    base, doubled = project(f, END), project(f, END, growth_factor=2.0)
    last = f.last_fitted
    assert np.allclose(doubled.mean - last, 2 * (base.mean - last))
    # (41 - last) GB at 40 MB/day instead of 20, from the last sample (day 199, midnight);
    # projections are evaluated at noon.
    days_after = math.ceil((41 * GB - last) / 40e6 - 0.5)
    assert crossing(doubled, 41 * GB).expected == START + timedelta(days=199 + days_after)


def test_a_joining_school_adds_size_then_growth(params) -> None:
    days = tuple(date(2026, 1, 1) + timedelta(days=i) for i in range(800))
    j = joining_school("new", date(2026, 9, 1), 8 * GB, 4 * GB, days)
    before, on = days.index(date(2026, 8, 31)), days.index(date(2026, 9, 1))
    assert j.mean[before] == 0 and j.mean[on] == 8 * GB
    assert j.mean[on + 365] == pytest.approx(8 * GB + 4 * GB * 365 / 365.25)


def test_empty_and_short_histories_are_refused(params) -> None:
    empty = Series("ifsi_millau", np.array([]), np.array([]))
    with pytest.raises(CapacityError, match="'ifsi_millau' is empty"):
        fit(empty, params.forecast)
    short = series("ifsi_millau", START, 5, linear(GB, 1e6))
    with pytest.raises(CapacityError, match=r"too short: 5 point\(s\) over 4 day\(s\).*at least 8 points"):
        fit(short, params.forecast)
