"""Benchmark: backup and incremental backup of many small blobs against moto
(issue 16): time and peak memory of the backup process, which must stay flat
in the number of blobs (target: under 300 MB at 1,000,000 blobs).

Starts moto in server mode on a free 127.0.0.1 port, writes N small random
blobs (64-1024 bytes) into a synthetic filedir/<h0:2>/<h2:4>/<sha1>, then runs
the filedir part of `moodleops backup run` (platform_backup.backup_blobs: the
SQLite bucket index, the run's on-disk sets, the bounded transfer queue, the
streamed blob list) twice: a first backup (index built from a listing of the
empty bucket) and, after adding 1 % new blobs, an incremental one (index
sampled, not rebuilt: no bucket listing). Every blob stands for a file row of
the dump, so the "referenced by the dump" set is the whole filedir. A sampler
thread reads this process's VmRSS every 0.1 s: the peak of each phase is
reported with its duration; moto's own peak RSS is reported apart.

  .venv/bin/python bench/backup_million.py [--blobs 1000000] [--new-pct 1] [--workers N] [--tmp DIR]

Results: a table on stdout and bench/results/backup_million.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import moto_server

from moodleops.backup.blobs import iter_filedir
from moodleops.backup.config import backup_config
from moodleops.backup.index import BlobIndex
from moodleops.backup.platform_backup import backup_blobs
from moodleops.backup.s3 import client, ensure_bucket, list_keys
from moodleops.inventory import load_inventory

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "backup_million.json"
BUCKET, REGION = "moodleops-bench-million", "eu-west-3"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    """Peak resident memory of this process while a phase runs."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> Self:
        self.peak = rss_mb()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def write_blobs(filedir: Path, count: int, rng: random.Random) -> int:
    made = 0
    for _ in range(count):
        data = rng.randbytes(rng.randint(64, 1024))
        sha1 = hashlib.sha1(data).hexdigest()
        d = filedir / sha1[:2] / sha1[2:4]
        d.mkdir(parents=True, exist_ok=True)
        (d / sha1).write_bytes(data)
        made += 1
    return made


def phase(s3: Any, cfg: Any, state: Path, filedir: Path, work: Path, name: str) -> dict[str, Any]:
    idx = BlobIndex.for_bucket(state, cfg)
    rd = work / f"run-{name}"
    rd.mkdir()
    t = time.perf_counter()
    with PeakRSS() as peak:
        referenced = (h for h, _ in iter_filedir(filedir))
        rep, checks, missing, entry = backup_blobs(s3, cfg, idx, referenced, rd, name, datetime.now(UTC),
                                                   filedir, work / "trashdir")
    secs = time.perf_counter() - t
    idx.close()
    if missing or rep.corrupt or rep.vanished:
        raise RuntimeError(f"{name}: {len(missing)} missing, {len(rep.corrupt)} corrupt, {len(rep.vanished)} vanished")
    return {"phase": name, "seconds": round(secs, 1), "peak_rss_mb": round(peak.peak, 1),
            "blobs_total": rep.total, "sent": rep.uploaded, "skipped": rep.skipped, "index": checks["index"],
            "blob_list_entries": entry["count"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--new-pct", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.blobs < 100 or not 0 < args.new_pct <= 100:
        ap.error("--blobs >= 100, 0 < --new-pct <= 100")
    work = Path(tempfile.mkdtemp(prefix="moodleops-bench-million-", dir=args.tmp))
    started = datetime.now(UTC)
    try:
        base = backup_config(load_inventory(str(REPO / "inventory" / "local")))
        filedir = work / "filedir"
        rng = random.Random(args.seed)
        t = time.perf_counter()
        write_blobs(filedir, args.blobs, rng)
        print(f"generated {args.blobs} blobs in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "moodleops-bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "moodleops-bench")
        os.environ.pop("AWS_PROFILE", None)
        motodir = work / "moto-tmp"
        motodir.mkdir()
        with moto_server(motodir) as (url, moto_pid):
            cfg = dataclasses.replace(base, bucket=BUCKET, region=REGION, endpoint_url=url, prefix="bench/",
                                      workers=args.workers or base.workers)
            boto3.client("s3", endpoint_url=url, region_name=REGION).create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
            s3 = client(cfg)
            ensure_bucket(s3, cfg)
            state = work / "state"
            phases = [phase(s3, cfg, state, filedir, work, "first")]
            print(json.dumps(phases[-1]), file=sys.stderr, flush=True)
            n_new = max(1, round(args.blobs * args.new_pct / 100))
            write_blobs(filedir, n_new, rng)
            phases.append(phase(s3, cfg, state, filedir, work, "incremental"))
            print(json.dumps(phases[-1]), file=sys.stderr, flush=True)
            if phases[1]["sent"] != n_new or phases[1]["skipped"] != args.blobs:
                raise RuntimeError(f"incremental sent {phases[1]['sent']}, skipped {phases[1]['skipped']}; "
                                   f"expected {n_new} and {args.blobs}")
            stored = len(list_keys(s3, cfg, cfg.key("blobs", "")))
            if stored != args.blobs + n_new:
                raise RuntimeError(f"bucket holds {stored} blobs, expected {args.blobs + n_new}")
            moto_peak = hwm_mb(moto_pid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"date": started.isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
              "params": {"blobs": args.blobs, "new_pct": args.new_pct, "workers": cfg.workers},
              "moto_peak_rss_mb": round(moto_peak), "phases": phases}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'phase':<12} {'blobs':>9} {'sent':>9} {'skipped':>9} {'time':>8} {'peak RSS':>9}")
    for p in phases:
        print(f"{p['phase']:<12} {p['blobs_total']:>9} {p['sent']:>9} {p['skipped']:>9} {p['seconds']:>7.1f}s "
              f"{p['peak_rss_mb']:>7.0f}MB")
    print(f"moto peak RSS {report['moto_peak_rss_mb']} MB; results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
