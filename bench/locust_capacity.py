"""Benchmark (on demand, not in the test suite): a calendar shape on the local
stack at growing user counts, up to the knee, and what limited each step.

    .venv/bin/python bench/locust_capacity.py --shape exam --users 10,20,40,80 --duration 40
    .venv/bin/python bench/locust_capacity.py --shape september --users 10,20,40,80 --duration 60
    .venv/bin/python bench/locust_capacity.py --inventory rehearsal --web-nodes 2,1 --workers 2 \
        --shape exam --users 10,20,40 --duration 40

On the rehearsal (`moodleops -i rehearsal platform up` first), the fixture is
prepared on web1 over SSH and the workers run on gen1/gen2; --web-nodes 2,1
plays every step with both web nodes, then with web1 alone (web2's nginx
stopped, lb1's health check takes it out; started again at the end), so the
ratio of the knees is the scaling the sizing assumes.

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
import subprocess
import tempfile
import time
from pathlib import Path

from moodleops.loadtests import fixture as fx
from moodleops.loadtests.model import load_model

from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.rehearsal import ssh
from moodleops.rehearsal.spec import load_rehearsal, own_addresses


def _web2(inv_env: str, action: str) -> None:
    """Start or stop nginx on the rehearsal's second web node (lb1 then takes it in or out)."""
    inv = load_inventory(inv_env)
    spec = load_rehearsal(inv)
    node = spec.host(inv.group("web")[1].name)
    subprocess.run(ssh.ssh_argv(spec, node, f"sudo service nginx {action}"), check=True, timeout=60,
                   capture_output=True)
    time.sleep(8)       # a few of lb1's health checks (2 s, fall/rise 2)


def _steps(args: argparse.Namespace, prefix: str, work: Path, counts: list[int], slo: float, nodes: int) -> dict:
    rows: list[dict] = []
    for n in counts:
        res = work / f"{args.shape}-{nodes}n-{n}"
        t0 = time.monotonic()
        rc = main(["-i", args.inventory, "loadtest", "run", "--prefix", prefix, "--fixture-dir", str(work),
                   "--results", str(res), "--shape", args.shape, "--users", str(n), "--duration", str(args.duration),
                   "--workers", str(args.workers), "--quiet"])
        s = json.loads((res / "summary.json").read_text(encoding="utf-8"))
        peak = s["peak_window"]["totals"]
        server = s["server"] or {}
        row = {"shape": args.shape, "web_nodes": nodes, "users": n, "rc": rc,
               "wall_s": round(time.monotonic() - t0, 1), "peak_rps": peak["rps"], "peak_p95_ms": peak["p95_ms"],
               "error_rate": s["totals"]["error_rate"], "verdict": s["verdict"]["status"],
               "mix_gap": s["mix"]["gap"], "per_node": {k: {"rps": v["rps"], "p95_ms": v["p95_ms"]}
                                                        for k, v in s["peak_window"].get("nodes", {}).items()},
               "first_saturated": server.get("first_saturated"), "peaks": server.get("peaks"),
               "load1": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if peak["p95_ms"] > 2 * slo or s["totals"]["error_rate"] > 0.05:
            break
    knee = rows[0]
    for prev, cur in itertools.pairwise(rows):
        if cur["peak_rps"] >= 1.1 * prev["peak_rps"] and cur["peak_p95_ms"] <= slo:
            knee = cur
        else:
            break
    out = {"web_nodes": nodes, "users": knee["users"], "peak_rps": knee["peak_rps"],
           "peak_p95_ms": knee["peak_p95_ms"]}
    print(json.dumps({"knee": out, "limited_by": rows[min(len(rows) - 1, rows.index(knee) + 1)]["first_saturated"]}))
    return out


def main_bench() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("exam", "september", "weekday", "deadline"), default="exam")
    ap.add_argument("--users", default="10,20,40,80")
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--inventory", default="local", help="local, or a rehearsal (its own containers only)")
    ap.add_argument("--web-nodes", default="", help="rehearsal: web node counts to play, e.g. 2,1")
    args = ap.parse_args()
    counts = [int(x) for x in args.users.split(",")]
    inv = load_inventory(args.inventory)
    assert inv.is_loopback_only or {h.address for h in inv.hosts} <= own_addresses(inv), "loopback or rehearsal only"
    node_counts = [int(x) for x in args.web_nodes.split(",")] if args.web_nodes else [len(inv.group("web"))]
    assert all(n in (1, 2) for n in node_counts) and (node_counts == [len(inv.group("web"))] or
                                                      len(inv.group("web")) == 2)
    slo = load_model(inv).slo.p95_ms["default"]
    work = Path(tempfile.mkdtemp(prefix="locust-bench-"))
    prefix = fx.new_prefix()
    assert main(["-i", args.inventory, "loadtest", "prepare", "--prefix", prefix, "--for-shape", args.shape, "--users", str(max(counts)),
                 "--workers", str(args.workers), "--questions", str(args.questions),
                 "--fixture-dir", str(work)]) == 0
    knees = {}
    try:
        for nodes in node_counts:
            if nodes == 1 and len(inv.group("web")) == 2:
                _web2(args.inventory, "stop")
            try:
                knees[nodes] = _steps(args, prefix, work, counts, slo, nodes)
            finally:
                if nodes == 1 and len(inv.group("web")) == 2:
                    _web2(args.inventory, "start")
    finally:
        main(["-i", args.inventory, "loadtest", "cleanup", "--prefix", prefix, "--yes", "--fixture-dir", str(work)])
    if len(knees) == 2:
        print(json.dumps({"scaling": round(knees[2]["peak_rps"] / knees[1]["peak_rps"], 2)
                          if knees[1]["peak_rps"] else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench())
