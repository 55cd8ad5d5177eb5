"""Synthetic storage histories with known answers, for the forecast tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import numpy as np
from moodleops.capacity.history import Sample, Series

DAY = 86400.0


def epoch(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def series(name: str, start: date, days: int, f: Callable[[np.ndarray], np.ndarray], every: int = 1) -> Series:
    d = np.arange(0, days, every, dtype=float)
    return Series(name, epoch(start) + d * DAY, f(d))


def samples(s: Series) -> list[Sample]:
    return [Sample(float(t), s.name, float(v)) for t, v in zip(s.times, s.values, strict=True)]


def linear(level: float, per_day: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda d: level + per_day * d


def academic(level: float, per_year: float, start: date) -> Callable[[np.ndarray], np.ndarray]:
    """Content that grows with the academic year: fast in the autumn, almost not
    in summer. Exactly `per_year` per year, in bursts (a smooth sawtooth-like curve)."""
    phase0 = (start - date(start.year if start.month >= 9 else start.year - 1, 9, 1)).days / 365.25

    def f(d: np.ndarray) -> np.ndarray:
        years = d / 365.25 + phase0
        cycles = np.floor(years)
        within = years - cycles
        # Cumulative share of a year's growth reached at `within` (0..1): 1-(1-x)^3, front-loaded.
        return level + per_year * (cycles + (1 - (1 - within) ** 3) - phase0_share(phase0))
    return f


def phase0_share(phase0: float) -> float:
    return 1 - (1 - phase0) ** 3
