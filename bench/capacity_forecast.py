"""Benchmark of `moodleops capacity`: forecasting every school and the pool
from a long daily history, and counting a full year's billing snapshot.

    .venv/bin/python bench/capacity_forecast.py [--years 5] [--students 4200]

Synthetic, offline (no Moodle needed): the figures measure this code only.
Target: a whole forecast (20 schools, pool, scenarios) in under 5 s and a
billing count of the platform's population in under 1 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
from moodleops.capacity import billing
from moodleops.capacity.config import load_params
from moodleops.capacity.history import Sample, group
from moodleops.capacity.planning import Join, plan

from moodleops.inventory import load_inventory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=float, default=5.0, help="history length (default: %(default)s)")
    ap.add_argument("--students", type=int, default=4200, help="billing population (default: %(default)s)")
    args = ap.parse_args()
    inv = load_inventory("local")
    params = load_params(inv)
    rng = np.random.default_rng(0)
    days = int(args.years * 365)
    start = datetime(2024, 9, 1, tzinfo=UTC).timestamp()
    samples = []
    for i, s in enumerate(inv.schools):
        level = 2e9 + i * 5e8
        y = level + np.cumsum(5e6 + i * 1e6 + rng.normal(0, 3e7, days)) + rng.normal(0, 1e8, days)
        samples += [Sample(start + d * 86400.0, s.code, float(v)) for d, v in enumerate(y)]
    t0 = time.perf_counter()
    series = group(samples)
    t1 = time.perf_counter()
    last = max(s.last_time.date() for s in series.values())
    until = max(inv.platform.agreement_end, last + timedelta(days=365))
    params_f = params.forecast
    pl = plan(inv, params_f, series, until, None,
              [Join("ifsi_new", 10e9, 5e9, None)], {inv.schools[0].code: 2.0})
    t2 = time.perf_counter()
    print(f"history: {len(inv.schools)} schools x {days} days = {len(samples)} samples; grouping {t1 - t0:.2f} s")
    print(f"forecast (schools + pool + 2 scenarios, to {until}): {t2 - t1:.2f} s; "
          f"{len(pl.schools)} school rows, pool {'ok' if pl.pool else 'missing'}")

    codes = [s.code for s in inv.schools]
    taken = int(datetime(2025, 7, 16, tzinfo=UTC).timestamp())
    members = []
    for uid in range(args.students):
        for code in ([codes[uid % len(codes)]] + ([codes[(uid + 1) % len(codes)]] if uid % 97 == 0 else [])):
            members.append(billing.Membership(uid, f"u{uid:07d}", code, taken - 86400 * 300,
                                              uid % 53 == 0, "student" if uid % 11 else "trainer"))
    snap = billing.Snapshot(taken, "bench", "cohort", "ut_accounttype", tuple(members))
    t3 = time.perf_counter()
    result = billing.count(inv, snap, 2025, params.billing.timezone)
    billing.to_csv(result)
    t4 = time.perf_counter()
    print(f"billing: {len(members)} memberships -> {result.total_students} students billed, "
          f"{len(result.shared)} shared; {t4 - t3:.3f} s")
    print(f"machine: {date.today()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
