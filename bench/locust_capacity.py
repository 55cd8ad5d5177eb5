"""Benchmark (on demand, not in the test suite): a calendar shape on the local
stack at growing user counts, up to the knee, and what limited each step.

    .venv/bin/python bench/locust_capacity.py --shape exam --users 10,20,40,80 --duration 40
    .venv/bin/python bench/locust_capacity.py --shape september --users 10,20,40,80 --duration 60

Prepares its own fixture sized for the largest step (random prefix), runs
`moodleops loadtest run` once per user count against 127.0.0.1 only, prints
one JSON line per step — the peak window's throughput and p95, the error
rate, the server-side peaks (CPU, php-fpm active workers and queue,
PostgreSQL active backends, Locust's CPU) and what saturated first — then the
knee: the last step whose peak throughput still grew by 10% or more with p95
within its SLO. Stops early once p95 passes twice the SLO or errors pass 5%
(bounded on a shared machine), and removes the fixture.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from moodleops.loadtests import fixture as fx
from moodleops.loadtests.model import load_model

from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.site import site_of


def main_bench() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("exam", "september", "weekday", "deadline"), default="exam")
    ap.add_argument("--users", default="10,20,40,80")
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    counts = [int(x) for x in args.users.split(",")]
    inv = load_inventory("local")
    assert inv.is_loopback_only and "127.0.0.1" in site_of(inv).wwwroot
    slo = load_model(inv).slo.p95_ms["default"]
    work = Path(tempfile.mkdtemp(prefix="locust-bench-"))
    prefix = fx.new_prefix()
    assert main(["loadtest", "prepare", "--prefix", prefix, "--for-shape", args.shape, "--users", str(max(counts)),
                 "--workers", str(args.workers), "--questions", str(args.questions),
                 "--fixture-dir", str(work)]) == 0
    rows: list[dict] = []
    try:
        for n in counts:
            res = work / f"{args.shape}-{n}"
            t0 = time.monotonic()
            rc = main(["loadtest", "run", "--prefix", prefix, "--fixture-dir", str(work), "--results", str(res),
                       "--shape", args.shape, "--users", str(n), "--duration", str(args.duration),
                       "--workers", str(args.workers), "--quiet"])
            s = json.loads((res / "summary.json").read_text(encoding="utf-8"))
            peak = s["peak_window"]["totals"]
            server = s["server"] or {}
            row = {"shape": args.shape, "users": n, "rc": rc, "wall_s": round(time.monotonic() - t0, 1),
                   "peak_rps": peak["rps"], "peak_p95_ms": peak["p95_ms"], "error_rate": s["totals"]["error_rate"],
                   "verdict": s["verdict"]["status"], "mix_gap": s["mix"]["gap"],
                   "first_saturated": server.get("first_saturated"), "peaks": server.get("peaks"),
                   "load1": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if peak["p95_ms"] > 2 * slo or s["totals"]["error_rate"] > 0.05:
                break
    finally:
        main(["loadtest", "cleanup", "--prefix", prefix, "--yes", "--fixture-dir", str(work)])
    knee = rows[0]
    for prev, cur in itertools.pairwise(rows):
        if cur["peak_rps"] >= 1.1 * prev["peak_rps"] and cur["peak_p95_ms"] <= slo:
            knee = cur
        else:
            break
    print(json.dumps({"knee": {"users": knee["users"], "peak_rps": knee["peak_rps"],
                               "peak_p95_ms": knee["peak_p95_ms"]},
                      "limited_by": rows[min(len(rows) - 1, rows.index(knee) + 1)]["first_saturated"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench())
