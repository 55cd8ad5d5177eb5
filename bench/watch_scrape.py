"""Benchmark: scrape latency of the health and abuse exporter (issue 18).

Against the local stack's Moodle (read-only role): one exporter serving on a
loopback port, N sequential GETs of /metrics idle, then N GETs while two threads
run reads of Moodle's tables back to back (far more often than the production
interval of 60 s). Target: p99 < 50 ms during reads. Prints a table and writes
bench/results/watch_scrape.json.

  .venv/bin/python bench/watch_scrape.py [--scrapes 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests
from moodleops.exporters.watch_config import thresholds, watch_config
from moodleops.exporters.watch_exporter import WatchExporter

from moodleops.inventory import load_inventory
from moodleops.site import site_of

RESULTS = Path(__file__).resolve().parent / "results" / "watch_scrape.json"


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "p99_ms": q[98] * 1000, "max_ms": max(samples) * 1000}


def _scrapes(url: str, n: int) -> list[float]:
    out: list[float] = []
    with requests.Session() as s:
        s.get(url, timeout=5)
        for _ in range(n):
            t0 = time.perf_counter()
            s.get(url, timeout=5).raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrapes", type=int, default=1000)
    args = ap.parse_args()
    inv = load_inventory("local")
    ex = WatchExporter(watch_config(inv, site_of(inv)), thresholds(inv), interval_s=3600)   # php-fpm not read
    if not ex.read_once():
        raise SystemExit(f"watch_scrape: the first read failed: {ex.state().last_error}")
    server, _ = ex.serve("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"   # type: ignore[attr-defined]
    size = len(requests.get(url, timeout=5).content)
    idle = _scrapes(url, args.scrapes)
    stop = threading.Event()
    durations: list[float] = []

    def reading() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            ex.read_once()
            durations.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=reading, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        busy = _scrapes(url, args.scrapes)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        server.shutdown()   # type: ignore[attr-defined]
        ex.stop()
    doc = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
           "scrapes": args.scrapes, "body_bytes": size, "idle": _percentiles(idle), "during_reads": _percentiles(busy),
           "reads_during": len(durations), "read_median_s": statistics.median(durations) if durations else None}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"/metrics body {size} bytes; {len(durations)} reads during the busy run "
          f"(median {doc['read_median_s']:.3f} s)")
    print(f"{'':14} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
    for name in ("idle", "during_reads"):
        p = doc[name]
        print(f"{name:14} {p['p50_ms']:8.2f} {p['p95_ms']:8.2f} {p['p99_ms']:8.2f} {p['max_ms']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
