"""Forecasts for every school and the pool, with scenarios, from one history."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
from moodleops.capacity.config import ForecastParams
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.forecast import (
    Crossing,
    Projection,
    add,
    check_history,
    crossing,
    daily_grid,
    fit,
    joining_school,
    project,
)
from moodleops.capacity.history import POOL, Series, pool_of

from moodleops.inventory import Inventory

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kMGT]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}


def parse_bytes(text: str, what: str) -> float:
    """'5GB', '750 MB', '1.5T', '2000000' -> bytes (decimal units, as the agreement)."""
    m = _SIZE.match(text)
    if not m:
        raise CapacityError(f"{what} {text!r} is not valid (a size like 5GB, 750MB, 1.5TB or bytes)")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class Join:
    """Scenario: a school joins on `day` with `size` bytes, growing `per_year`."""

    code: str
    size: float
    per_year: float
    day: date | None      # None: the first forecast day


def parse_join(text: str) -> Join:
    parts = text.split(":")
    usage = "CODE:SIZE:GROWTH_PER_YEAR[:YYYY-MM-DD], e.g. newschool:5GB:3GB:2026-09-01"
    if len(parts) not in (3, 4) or not re.match(r"^[a-z][a-z0-9_]{1,31}$", parts[0]):
        raise CapacityError(f"--join {text!r} is not valid ({usage})")
    day = None
    if len(parts) == 4:
        try:
            day = date.fromisoformat(parts[3])
        except ValueError:
            raise CapacityError(f"--join {text!r}: date {parts[3]!r} is not valid (YYYY-MM-DD)") from None
    return Join(parts[0], parse_bytes(parts[1], "--join size"), parse_bytes(parts[2], "--join growth"), day)


@dataclass(frozen=True)
class Outcome:
    name: str
    threshold: float
    last_value: float | None
    projection: Projection
    crossing: Crossing
    scenario: bool = False
    extra: dict[str, Crossing] = field(default_factory=dict)   # pool warning/critical


@dataclass
class Plan:
    until: date
    schools: list[Outcome]
    pool: Outcome | None
    pool_scenario: Outcome | None
    skipped: dict[str, str]            # school -> why it has no forecast
    ignored: list[str]                 # series of schools not in the inventory
    pool_is_sum: bool


def plan(inv: Inventory, params: ForecastParams, series: dict[str, Series], until: date,
         only: list[str] | None = None, joins: list[Join] | None = None,
         growth: dict[str, float] | None = None) -> Plan:
    p = inv.platform
    joins = joins or []
    growth = growth or {}
    codes = [s.code for s in inv.schools]
    for code in [*(only or []), *growth]:
        inv.school(code)    # unknown school: InventoryError naming the allowed codes
    for j in joins:
        if j.code in codes:
            raise CapacityError(f"--join {j.code}: already a school of the inventory (joins are new schools)")
        if j.day is not None and not p.agreement_start <= j.day <= p.agreement_end:
            raise CapacityError(f"--join {j.code}: date {j.day} is outside the agreement "
                                f"({p.agreement_start} to {p.agreement_end})")
    if not any(len(s.times) for s in series.values()):
        raise CapacityError("history is empty: no sample of any school (check the metric name, "
                            "the Prometheus URL or the recorded files)")
    ignored = sorted(k for k in series if k not in codes and k != POOL)
    wanted = only or codes
    skipped: dict[str, str] = {}
    outcomes: list[Outcome] = []
    fits = {}
    for code in codes:
        s = series.get(code)
        try:
            if s is None:
                raise CapacityError(f"no history for school {code!r}")
            f = fit(s, params)
        except CapacityError as exc:
            skipped[code] = str(exc)
            continue
        fits[code] = f
    for code in wanted:
        if code in skipped and only:
            raise CapacityError(skipped[code])
    # A common grid: from the day after the latest sample of all to `until`.
    if not fits:
        missing = [c for c, why in skipped.items() if why.startswith("no history")]
        reasons = [why for why in skipped.values() if not why.startswith("no history")]
        if missing:
            reasons.append(f"no history at all for {len(missing)} school(s) ({', '.join(missing[:3])}"
                           + (", ..." if len(missing) > 3 else "") + ")")
        raise CapacityError("no school has enough history for a forecast: " + "; ".join(reasons))
    last = max(f.series.last_time.date() for f in fits.values())
    if until <= last:
        raise CapacityError(f"forecast end {until} is not after the last sample ({last})")
    projections: dict[str, Projection] = {}
    for code, f in fits.items():
        proj = project(f, until)
        projections[code] = _on_grid(proj, last, until)
    for code in wanted:
        if code not in fits:
            continue
        base = projections[code]
        school = inv.school(code)
        last_value = float(fits[code].series.values[-1])
        outcomes.append(Outcome(code, school.alert_bytes, last_value, base,
                                crossing(base, school.alert_bytes, last_value)))
        if code in growth:
            scaled = _on_grid(project(fits[code], until, growth[code]), last, until)
            outcomes.append(Outcome(code, school.alert_bytes, last_value, scaled,
                                    crossing(scaled, school.alert_bytes, last_value), scenario=True))

    # The pool: its own series when there is one, else the sum of the schools.
    pool_series = series.get(POOL)
    pool_is_sum = pool_series is None
    if pool_series is None:
        pool_series = pool_of({k: v for k, v in series.items() if k in codes})
    pool_out = pool_scn = None
    try:
        check_history(pool_series, params)
        pf = fit(pool_series, params)
        pool_proj = _on_grid(project(pf, until), last, until)
        pool_out = _pool_outcome(inv, pool_proj, float(pool_series.values[-1]), scenario=False)
        if joins or growth:
            parts = [pool_proj]
            for code, g in growth.items():
                if code in fits:
                    extra = _on_grid(project(fits[code], until, g), last, until)
                    parts.append(_extra(extra, projections[code]))
            for j in joins:
                parts.append(joining_school(j.code, j.day or pool_proj.days[0], j.size, j.per_year,
                                            pool_proj.days))
            pool_scn = _pool_outcome(inv, add("pool (scenario)", parts), float(pool_series.values[-1]),
                                     scenario=True)
    except CapacityError as exc:
        skipped[POOL] = str(exc)
    return Plan(until, outcomes, pool_out, pool_scn, skipped, ignored, pool_is_sum)


def _extra(scaled: Projection, base: Projection) -> Projection:
    """What a scenario adds to the pool: the mean difference, with the extra
    band width of the scaled school as its band."""
    mean = scaled.mean - base.mean
    lo_half = np.maximum((scaled.mean - scaled.low) - (base.mean - base.low), 0)
    hi_half = np.maximum((scaled.high - scaled.mean) - (base.high - base.mean), 0)
    return Projection(base.name, base.days, mean, mean - lo_half, mean + hi_half, None, scaled.notes)


def _on_grid(p: Projection, last: date, until: date) -> Projection:
    """Cut or extend (holding the first value) a projection to the days last+1..until,
    so that schools measured on different last days add up day by day."""
    days = daily_grid(last + timedelta(days=1), until)
    offset = (days[0] - p.days[0]).days
    idx = np.clip(np.arange(len(days)) + offset, 0, len(p.days) - 1)
    return Projection(p.name, days, p.mean[idx], p.low[idx], p.high[idx], p.fit, p.notes)


def _pool_outcome(inv: Inventory, proj: Projection, last_value: float, scenario: bool) -> Outcome:
    p = inv.platform
    extra = {f"warning {p.pool_warning_ratio:.0%}": crossing(proj, p.pool_bytes * p.pool_warning_ratio, last_value),
             f"critical {p.pool_critical_ratio:.0%}": crossing(proj, p.pool_bytes * p.pool_critical_ratio,
                                                               last_value)}
    return Outcome(POOL, float(p.pool_bytes), last_value, proj, crossing(proj, p.pool_bytes, last_value),
                   scenario, extra)
