"""Trend model of a storage series, with a prediction band and threshold crossings.

Model (least squares made robust with Huber weights):
    bytes(t) = a + b*t + sum_j c_j * [t >= step_j] + seasonal(academic-year phase) + noise
- steps: day-to-day jumps far outside the usual change (bulk imports, mass
  deletions) become level shifts, so one import does not bend the slope;
- seasonal: Fourier terms of the academic-year phase, fitted only once a full
  year has been seen (a cycle cannot be told from a trend in less);
- band: residual scale (MAD) plus the parameters' uncertainty, the latter
  inflated by (1+rho)/(1-rho) for lag-1 autocorrelation rho of the residuals,
  plus a random-walk term that grows with the horizon h:
  lrv * (h + h^2/span), where lrv is the long-run variance per day of the
  residuals' day-to-day changes. Storage is cumulative: its noise is mostly in
  the increments (a busy week stays uploaded), so the uncertainty of a level
  far ahead grows like sqrt(h) and the drift itself is uncertain. For plain
  measurement noise the changes are anti-correlated (r1 = -1/2) and lrv
  vanishes, leaving the classic regression band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from statistics import NormalDist

import numpy as np
from moodleops.capacity.config import ForecastParams
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.history import Series

DAY = 86400.0
YEAR_DAYS = 365.25
_HUBER_C = 1.345
_MAD_TO_SIGMA = 1.4826
_MAX_STEPS = 3
_WALK_SIGMAS = 2.0


@dataclass(frozen=True)
class Fit:
    series: Series
    t0: float                       # epoch seconds of the first sample (t = 0)
    coef: np.ndarray
    cov: np.ndarray                 # covariance of coef, autocorrelation-inflated
    sigma: float                    # robust residual scale, bytes
    rho: float                      # lag-1 autocorrelation of residuals
    steps: tuple[float, ...]        # epoch seconds of detected level shifts
    harmonics: int                  # 0: no seasonality fitted
    year_start: tuple[int, int]     # (month, day) the academic year starts
    z: float                        # band half-width in sigmas
    confidence: float
    lrv_per_day: float              # long-run variance of residual increments, bytes^2/day

    @property
    def slope_per_year(self) -> float:
        return float(self.coef[1]) * YEAR_DAYS

    @property
    def last_fitted(self) -> float:
        return float(self.predict(np.array([self.series.times[-1]]))[0][0])

    def design(self, times: np.ndarray) -> np.ndarray:
        return _design(times, self.t0, self.steps, self.harmonics, self.year_start)

    def predict(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and band half-width at `times` (epoch seconds)."""
        x = self.design(times)
        mean = x @ self.coef
        param_var = np.einsum("ij,jk,ik->i", x, self.cov, x)
        h = np.maximum(times - self.series.times[-1], 0.0) / DAY
        walk = self.lrv_per_day * (h + h ** 2 / max(self.series.span_days, 1.0))
        half = self.z * np.sqrt(self.sigma ** 2 + np.maximum(param_var, 0.0) + walk)
        return mean, half


def _phase(times: np.ndarray, year_start: tuple[int, int]) -> np.ndarray:
    """Fraction of the academic year elapsed at each time (0 on its first day)."""
    out = np.empty(len(times))
    for i, t in enumerate(times):
        d = datetime.fromtimestamp(float(t), UTC).date()
        start = date(d.year, *year_start)
        if d < start:
            start = date(d.year - 1, *year_start)
        out[i] = (d - start).days / YEAR_DAYS
    return out


def _design(times: np.ndarray, t0: float, steps: tuple[float, ...], harmonics: int,
            year_start: tuple[int, int]) -> np.ndarray:
    t = (times - t0) / DAY
    cols = [np.ones_like(t), t]
    cols += [(times >= s).astype(float) for s in steps]
    if harmonics:
        ph = _phase(times, year_start)
        for k in range(1, harmonics + 1):
            cols += [np.sin(2 * np.pi * k * ph), np.cos(2 * np.pi * k * ph)]
    return np.column_stack(cols)


def _mad(x: np.ndarray) -> float:
    return float(np.median(np.abs(x - np.median(x)))) * _MAD_TO_SIGMA


def _level_shifts(s: Series, threshold: float) -> tuple[float, ...]:
    """Times where the change since the previous sample is more than `threshold`
    robust scales away from the typical change for that gap."""
    if len(s.times) < 4:
        return ()
    gaps = np.diff(s.times) / DAY
    rates = np.diff(s.values) / gaps
    centre = float(np.median(rates))
    scale = _mad(rates)
    # A perfectly regular history has scale 0: any visible jump is then a step,
    # but rounding noise (a few bytes) must not be.
    floor = 1e-6 * max(float(np.max(np.abs(s.values))), 1.0)
    excess = np.abs(np.diff(s.values) - centre * gaps) - threshold * np.maximum(scale * gaps, floor)
    candidates = [i for i in np.argsort(-excess) if excess[i] > 0][:_MAX_STEPS]
    # A shift at the very first interval leaves one point before it: nothing to anchor.
    return tuple(sorted(float(s.times[i + 1]) for i in candidates if i > 0))


def _robust_lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Huber IRLS: coefficients, final weights, robust residual scale."""
    w = np.ones(len(y))
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    sigma = 0.0
    for _ in range(50):
        r = y - x @ coef
        sigma = _mad(r)
        if sigma <= 0:
            break
        u = np.abs(r) / (_HUBER_C * sigma)
        w = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
        sw = np.sqrt(w)
        new = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
        if np.allclose(new, coef, rtol=1e-9, atol=1e-6):
            coef = new
            break
        coef = new
    return coef, w, sigma


def check_history(s: Series, params: ForecastParams) -> None:
    if len(s.times) == 0:
        raise CapacityError(f"history of {s.name!r} is empty: no samples to forecast from")
    if len(s.times) < params.min_points or s.span_days < params.min_span_days:
        raise CapacityError(
            f"history of {s.name!r} is too short: {len(s.times)} point(s) over {s.span_days:.0f} day(s); "
            f"a forecast needs at least {params.min_points} points over {params.min_span_days} days "
            "(capacity.yml forecast.min_points, forecast.min_span_days)")


def fit(s: Series, params: ForecastParams) -> Fit:
    check_history(s, params)
    t0 = float(s.times[0])
    steps = _level_shifts(s, params.level_shift_threshold)
    harmonics = params.seasonal_harmonics if s.span_days >= params.seasonality_min_days else 0
    year_start = (params.academic_year_start.month, params.academic_year_start.day)
    x = _design(s.times, t0, steps, harmonics, year_start)
    y = s.values.astype(float)
    coef, w, sigma = _robust_lstsq(x, y)
    resid = y - x @ coef
    # Scale floor: a noiseless synthetic history would otherwise claim certainty.
    if sigma == 0:
        sigma = float(np.std(resid))
    sigma = max(sigma, 1.0)
    rho = 0.0
    if len(resid) > 3 and np.std(resid) > 0:
        rho = float(np.clip(np.corrcoef(resid[:-1], resid[1:])[0, 1], 0.0, 0.95))
    dof = max(len(y) - x.shape[1], 1)
    xtwx = (x * w[:, None]).T @ x
    cov = np.linalg.pinv(xtwx) * sigma ** 2 * (len(y) / dof) * (1 + rho) / (1 - rho)
    z = NormalDist().inv_cdf(0.5 + params.confidence / 2)
    return Fit(s, t0, coef, cov, sigma, rho, steps, harmonics, year_start, z, params.confidence,
               _long_run_variance(s.times, resid, rho))


def _long_run_variance(times: np.ndarray, resid: np.ndarray, rho: float) -> float:
    """Variance per day of a random walk hidden in the residuals, from the growth
    of V(k), the mean squared change of the residuals over k samples: plain noise
    gives V(K) ~ V(1), a walk adds (K-1) x its variance. Counted only when the
    residuals are autocorrelated beyond what plain noise reaches by chance
    (lag-1 autocorrelation above 2/sqrt(n)), so that measurement noise does not
    widen the band for ever."""
    n = len(resid)
    if n < 8 or rho <= _WALK_SIGMAS / np.sqrt(n):
        return 0.0

    def v(k: int) -> tuple[float, float]:
        change = resid[k:] - resid[:-k]
        return float(np.mean(change ** 2)), float(np.mean(times[k:] - times[:-k])) / DAY

    v1, g1 = v(1)
    vk, gk = v(max(2, n // 10))
    return max(0.0, (vk - v1) / (gk - g1)) if gk > g1 else 0.0


# -- projections, scenarios and crossings ------------------------------------

@dataclass(frozen=True)
class Projection:
    """A forecast on a daily grid, after any scenario adjustment."""

    name: str
    days: tuple[date, ...]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    fit: Fit | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def at(self, day: date) -> tuple[float, float, float]:
        if not self.days or not self.days[0] <= day <= self.days[-1]:
            raise CapacityError(f"{day} is outside the forecast range {self.days[0]}..{self.days[-1]}")
        i = (day - self.days[0]).days
        return float(self.mean[i]), float(self.low[i]), float(self.high[i])


def daily_grid(start: date, end: date) -> tuple[date, ...]:
    return tuple(start + timedelta(days=i) for i in range((end - start).days + 1))


def _epoch(days: tuple[date, ...]) -> np.ndarray:
    # Noon UTC: the middle of each day, away from any midnight sample's edge.
    return np.array([datetime(d.year, d.month, d.day, 12, tzinfo=UTC).timestamp() for d in days])


def project(f: Fit, until: date, growth_factor: float = 1.0) -> Projection:
    """The fit's forecast from the day after its last sample to `until`. With
    growth_factor g, everything the model adds after the last sample (trend and
    season, and the band with it) is multiplied by g: "growth doubles" is g=2."""
    start = f.series.last_time.date() + timedelta(days=1)
    if until < start:
        raise CapacityError(f"forecast end {until} is not after the last sample ({f.series.last_time.date()})")
    days = daily_grid(start, until)
    mean, half = f.predict(_epoch(days))
    base = f.last_fitted
    notes: tuple[str, ...] = ()
    if growth_factor != 1.0:
        mean = base + growth_factor * (mean - base)
        half = half * max(growth_factor, 1.0)
        notes = (f"{f.series.name}: growth x{growth_factor:g}",)
    return Projection(f.series.name, days, mean, mean - half, mean + half, f, notes)


def joining_school(name: str, join: date, size: float, per_year: float, days: tuple[date, ...],
                   uncertainty: float = 0.0) -> Projection:
    """A school that joins on `join` with `size` bytes and grows by `per_year`
    (deterministic: there is no history to be uncertain about, so the band is
    only `uncertainty` x its own growth)."""
    t = np.array([(d - join).days for d in days], dtype=float)
    mean = np.where(t >= 0, size + per_year * np.maximum(t, 0) / YEAR_DAYS, 0.0)
    spread = uncertainty * np.maximum(mean - size, 0)
    return Projection(name, days, mean, mean - spread, mean + spread, None,
                      (f"{name} joins {join}: {size / 1e9:g} GB + {per_year / 1e9:g} GB/year",))


def add(name: str, parts: list[Projection]) -> Projection:
    """Sum of projections on the same grid. Band half-widths add (no
    diversification is assumed between schools: conservative)."""
    if not parts:
        raise CapacityError(f"{name}: nothing to add up")
    days = parts[0].days
    for p in parts:
        if p.days != days:
            raise CapacityError(f"{name}: projections {parts[0].name} and {p.name} have different ranges")
    mean = sum((p.mean for p in parts), np.zeros(len(days)))
    lo_half = sum((p.mean - p.low for p in parts), np.zeros(len(days)))
    hi_half = sum((p.high - p.mean for p in parts), np.zeros(len(days)))
    return Projection(name, days, mean, mean - lo_half, mean + hi_half, None,
                      tuple(n for p in parts for n in p.notes))


@dataclass(frozen=True)
class Crossing:
    threshold: float
    already: bool              # the last sample is already at or above the threshold
    expected: date | None      # mean crosses; None: not within the range
    earliest: date | None      # upper band crosses
    latest: date | None        # lower band crosses (None: maybe never within the range)


def crossing(p: Projection, threshold: float, last_value: float | None = None) -> Crossing:
    def first(values: np.ndarray) -> date | None:
        hit = np.nonzero(values >= threshold)[0]
        return p.days[int(hit[0])] if len(hit) else None
    already = last_value is not None and last_value >= threshold
    return Crossing(threshold, already, first(p.mean), first(p.high), first(p.low))


def horizon_check(day: date, start: date, end: date, what: str) -> date:
    if not start <= day <= end:
        raise CapacityError(f"{what} {day} is outside the agreement ({start} to {end}): "
                            "nothing is hosted, so nothing is planned, beyond it")
    return day
