"""Benchmark (on demand, not in the test suite): the local stack under the exam
shape as takers grow, and what one Locust process (FastHttpUser) costs.

    .venv/bin/python bench/locust_capacity.py [--users 10,25,50,100] [--duration 30]

Prepares its own fixture (random prefix), runs `moodleops loadtest run --shape
exam` once per user count against 127.0.0.1 only, prints one line per run
(throughput, p95 of the quiz pages, errors, Locust CPU share) and removes the
fixture. Locust's CPU share = its children CPU seconds / wall seconds: users a
single worker sustains ~ users / share (while the share stays under ~0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from moodleops.loadtests import fixture as fx

from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.site import site_of


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main_bench() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="10,25,50,100")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--questions", type=int, default=5)
    args = ap.parse_args()
    counts = [int(x) for x in args.users.split(",")]
    inv = load_inventory("local")
    assert inv.is_loopback_only and "127.0.0.1" in site_of(inv).wwwroot
    work = Path(tempfile.mkdtemp(prefix="locust-bench-"))
    prefix = fx.new_prefix()
    assert main(["loadtest", "prepare", "--prefix", prefix, "--students", str(max(counts)), "--trainers", "1",
                 "--questions", str(args.questions), "--fixture-dir", str(work)]) == 0
    rows = []
    try:
        for n in counts:
            cpu0, t0 = children_cpu(), time.monotonic()
            res = work / f"exam-{n}"
            main(["loadtest", "run", "--prefix", prefix, "--fixture-dir", str(work), "--results", str(res),
                  "--shape", "exam", "--users", str(n), "--duration", str(args.duration), "--quiet"])
            wall = time.monotonic() - t0
            s = json.loads((res / "summary.json").read_text(encoding="utf-8"))
            p = s["pages"]
            row = {"users": n, "rps": s["totals"]["rps"], "p95_ms": s["totals"]["p95_ms"],
                   "start_p95_ms": p.get("quiz:start", {}).get("p95_ms"),
                   "answer_p95_ms": p.get("quiz:answer", {}).get("p95_ms"),
                   "submit_p95_ms": p.get("quiz:submit", {}).get("p95_ms"),
                   "error_rate": s["totals"]["error_rate"], "locust_cpu_share": round((children_cpu() - cpu0) / wall, 3),
                   "load1": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        main(["loadtest", "cleanup", "--prefix", prefix, "--yes", "--fixture-dir", str(work)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench())
