"""Benchmark: filedir backup throughput (issue 9) against moto on loopback.

Starts moto in server mode on a free 127.0.0.1 port (a real S3 API over HTTP,
its own TMPDIR inside the benchmark's temp directory), generates a synthetic
Moodle-shaped filedir (filedir/<h0:2>/<h2:4>/<sha1> of random content; default
20,000 blobs / ~2 GB, a log-normal size mix: mostly small files, a few large
ones, the largest above the multipart part size), then measures in one run:

- floor: a plain recursive copy of filedir (shutil.copytree, then `cp -r`)
  to another temp directory on the same disk;
- first backup: the code path of `moodleops backup run` for filedir
  (scan_filedir -> bucket_blobs -> upload_missing, with the local inventory's
  backup settings pointed at the moto bucket: same part size, same workers);
- incremental: 1 % new blobs added to filedir, then the same code path again;
  every PutObject/CreateMultipartUpload key is recorded from the client, and
  the run must send exactly the new blobs (and skip all the others).

Reported per phase: MB/s (10^6 bytes per second), blobs/s, the CPU seconds
used by this process (client: hashing, botocore) and by the moto server, and
for the incremental run its duration broken down (scan, bucket listing,
upload) and the number of blobs skipped. All reads come from a warm page cache
(the filedir was just written; it fits in RAM) and no phase fsyncs.
Results: a table on stdout and bench/results/backup_throughput.json. Disk use
is bounded (filedir + one copy + moto's spooled objects, about 3x the size);
the temp directory and the moto server are removed/stopped at the end.

  .venv/bin/python bench/backup_throughput.py [--blobs 20000] [--size-gb 2] [--new-pct 1] [--workers N] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import requests

from moodleops.backup.blobs import bucket_blobs, local_path, scan_filedir, upload_missing
from moodleops.backup.config import BackupConfig, backup_config
from moodleops.backup.s3 import client, ensure_bucket
from moodleops.inventory import load_inventory

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "backup_throughput.json"
BUCKET = "moodleops-bench-backup"
REGION = "eu-west-3"
MB = 1_000_000
SIZE_SIGMA = 1.8          # log-normal spread: median ~1/5 of the mean
MIN_SIZE, MAX_SMALL = 64, 48 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- moto on loopback -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(tmp: Path) -> Iterator[tuple[str, int]]:
    """moto in server mode on 127.0.0.1; its spooled objects (> 5 MB) land in tmp, removed with it."""
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# --- the synthetic filedir --------------------------------------------------------------------

def blob_sizes(rng: random.Random, count: int, total: int, part_size: int) -> list[int]:
    """A Moodle-like mix: log-normal (many icons, thumbnails, small documents;
    fewer slides and PDFs), plus one large video/course backup per 10,000
    blobs (at least one) just above the multipart part size."""
    n_large = max(1, count // 10_000) if total > 4 * part_size else 0
    large = [part_size + rng.randrange(1, part_size // 2) for _ in range(n_large)]
    n_small = count - n_large
    mean = max(MIN_SIZE, (total - sum(large)) / max(n_small, 1))
    mu = math.log(mean) - SIZE_SIGMA ** 2 / 2
    sizes = [min(MAX_SMALL, max(MIN_SIZE, int(rng.lognormvariate(mu, SIZE_SIGMA)))) for _ in range(n_small)]
    return sizes + large


def write_blobs(filedir: Path, sizes: list[int], rng: random.Random) -> dict[str, int]:
    """Random content (unique: no dedup to hide work), written where Moodle would put it."""
    out: dict[str, int] = {}
    for size in sizes:
        data = rng.randbytes(size)
        sha1 = hashlib.sha1(data).hexdigest()
        path = local_path(filedir, sha1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[sha1] = size
    return out


# --- measurements -----------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    blobs: int                 # blobs handled (copied / sent)
    bytes: int
    seconds: float
    client_cpu_s: float
    moto_cpu_s: float | None
    skipped: int = 0
    skipped_bytes: int = 0
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds else 0.0

    @property
    def blobs_s(self) -> float:
        return self.blobs / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mb_per_s"] = round(self.mb_s, 2)
        d["blobs_per_s"] = round(self.blobs_s, 1)
        d["seconds"] = round(self.seconds, 3)
        d["client_cpu_s"] = round(self.client_cpu_s, 2)
        d["moto_cpu_s"] = None if self.moto_cpu_s is None else round(self.moto_cpu_s, 2)
        return d


def timed(fn: Callable[[], Any], moto_pid: int | None) -> tuple[Any, float, float, float | None]:
    c0, m0, t0 = self_cpu(), proc_cpu(moto_pid) if moto_pid else 0.0, time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    return out, secs, self_cpu() - c0, (proc_cpu(moto_pid) - m0) if moto_pid else None


def copy_floor(filedir: Path, work: Path, local: dict[str, int], how: str) -> Phase:
    dest = work / f"copy-{how}"

    def run() -> None:
        if how == "copytree":
            shutil.copytree(filedir, dest)
        else:
            subprocess.run(["cp", "-r", str(filedir), str(dest)], check=True)

    c0, t0 = os.times(), time.perf_counter()
    run()
    secs = time.perf_counter() - t0
    c1 = os.times()
    # cp runs as a child: its CPU shows in children_user/system.
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (c0.user + c0.system + c0.children_user
                                                                          + c0.children_system)
    copied = scan_filedir(dest)
    if copied != local:
        raise RuntimeError(f"{how}: the copy differs from filedir ({len(copied)} vs {len(local)} blobs)")
    shutil.rmtree(dest)
    label = "floor: shutil.copytree" if how == "copytree" else "floor: cp -r"
    return Phase(label, len(local), sum(local.values()), secs, cpu, None)


class SentKeys:
    """Every object key the client asks S3 to create (botocore event hook)."""

    def __init__(self, s3: Any) -> None:
        self.keys: list[str] = []
        self._lock = threading.Lock()
        for op in ("PutObject", "CreateMultipartUpload"):
            s3.meta.events.register(f"provide-client-params.s3.{op}", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.keys.append(params["Key"])

    def take(self) -> list[str]:
        with self._lock:
            out, self.keys = self.keys, []
        return out


def backup_filedir(s3: Any, cfg: BackupConfig, filedir: Path, moto_pid: int, name: str) -> Phase:
    """What run_backup does for filedir: scan, list the bucket, send the missing blobs."""
    timings: dict[str, float] = {}

    def run() -> Any:
        t = time.perf_counter()
        local = scan_filedir(filedir)
        timings["scan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        remote = bucket_blobs(s3, cfg)
        timings["bucket_list_s"] = time.perf_counter() - t
        rep = upload_missing(s3, cfg, filedir, local, remote)
        timings["upload_s"] = rep.seconds
        return rep

    rep, secs, cpu, moto_cpu = timed(run, moto_pid)
    if rep.corrupt or rep.vanished:
        raise RuntimeError(f"{name}: {len(rep.corrupt)} corrupt, {len(rep.vanished)} vanished blobs")
    return Phase(name, rep.uploaded, rep.uploaded_bytes, secs, cpu, moto_cpu, skipped=rep.skipped,
                 skipped_bytes=rep.skipped_bytes,
                 detail={k: round(v, 3) for k, v in timings.items()} | {"total_blobs": rep.total,
                                                                       "total_bytes": rep.total_bytes})


# --- main -------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import botocore
    import moto
    return {"cpus": os.cpu_count(), "mem_gib": round(mem / 2**30, 1), "python": platform.python_version(),
            "kernel": platform.release(), "moto": moto.__version__, "boto3": boto3.__version__,
            "botocore": botocore.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=20_000, help="blobs in the first backup (default 20000)")
    ap.add_argument("--size-gb", type=float, default=2.0, help="their total size in GB, 10^9 (default 2)")
    ap.add_argument("--new-pct", type=float, default=1.0, help="new blobs for the incremental run, %% (default 1)")
    ap.add_argument("--workers", type=int, default=None,
                    help="parallel transfers (default: the local inventory's backup_workers)")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--tmp", default=None, help="parent of the temp directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.blobs < 100 or not 0 < args.size_gb <= 50 or not 0 < args.new_pct <= 100:
        ap.error("--blobs >= 100, 0 < --size-gb <= 50, 0 < --new-pct <= 100")
    total = int(args.size_gb * 1e9)
    work = Path(tempfile.mkdtemp(prefix="moodleops-bench-backup-", dir=args.tmp))
    free = shutil.disk_usage(work).free
    if free < 3.5 * total:
        shutil.rmtree(work)
        print(f"backup_throughput: error: {work.parent} has {free / 1e9:.1f} GB free, needs ~{3.5 * total / 1e9:.1f}",
              file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    try:
        # The production-shaped settings (part size, workers, SSE, checksums) from the
        # inventory, pointed at the loopback bucket.
        base = backup_config(load_inventory(str(REPO / "inventory" / "local")))
        filedir = work / "moodledata" / "filedir"
        rng = random.Random(args.seed)
        sizes = blob_sizes(rng, args.blobs, total, base.part_size)
        t0 = time.perf_counter()
        local = write_blobs(filedir, sizes, rng)
        gen_s = time.perf_counter() - t0
        print(f"generated {len(local)} blobs, {sum(local.values()) / MB:.0f} MB in {work} ({gen_s:.1f} s)",
              file=sys.stderr, flush=True)

        phases: list[Phase] = []
        # Floors first, before moto exists: nothing else of ours competes for the CPUs.
        for how in ("copytree", "cp"):
            phases.append(copy_floor(filedir, work, local, how))
            print(f"{phases[-1].name}: {phases[-1].seconds:.1f} s", file=sys.stderr, flush=True)

        motodir = work / "moto-tmp"
        motodir.mkdir()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "moodleops-bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "moodleops-bench")
        os.environ.pop("AWS_PROFILE", None)
        with moto_server(motodir) as (url, moto_pid):
            cfg = dataclasses.replace(base, bucket=BUCKET, region=REGION, endpoint_url=url, prefix="bench/",
                                      workers=args.workers or base.workers)
            boto3.client("s3", endpoint_url=url, region_name=REGION).create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
            s3 = client(cfg)
            ensure_bucket(s3, cfg)
            sent = SentKeys(s3)

            first = backup_filedir(s3, cfg, filedir, moto_pid, "first backup")
            first_keys = sent.take()
            if first.blobs != len(local) or sorted(first_keys) != sorted(cfg.key("blobs", h) for h in local):
                raise RuntimeError(f"first backup sent {first.blobs} blobs ({len(first_keys)} keys), "
                                   f"expected {len(local)}")
            phases.append(first)

            n_new = max(1, round(len(local) * args.new_pct / 100))
            new = write_blobs(filedir, blob_sizes(rng, n_new, total * n_new // len(local), base.part_size), rng)
            inc = backup_filedir(s3, cfg, filedir, moto_pid, f"incremental (+{args.new_pct:g} %)")
            inc_keys = sent.take()
            exact = (sorted(inc_keys) == sorted(cfg.key("blobs", h) for h in new)
                     and inc.blobs == len(new) and inc.skipped == len(local))
            inc.detail |= {"new_blobs": len(new), "new_bytes": sum(new.values()),
                           "keys_sent": len(inc_keys), "sent_exactly_the_new_blobs": exact}
            phases.append(inc)
            if not exact:
                raise RuntimeError(f"incremental sent {len(inc_keys)} keys / {inc.blobs} blobs, skipped "
                                   f"{inc.skipped}; expected exactly the {len(new)} new, {len(local)} skipped")
            in_bucket = bucket_blobs(s3, cfg)
            if in_bucket != {**local, **new}:
                raise RuntimeError(f"bucket holds {len(in_bucket)} blobs, expected {len(local) + len(new)}")
            moto_rss_kb = int(next(ln for ln in Path(f"/proc/{moto_pid}/status").read_text().splitlines()
                                   if ln.startswith("VmHWM:")).split()[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    sizes_sorted = sorted(sizes)
    report = {
        "date": started.isoformat(timespec="seconds"), "machine": machine(),
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
        "params": {"blobs": len(local), "bytes": sum(local.values()), "new_pct": args.new_pct,
                   "workers": cfg.workers, "part_size": cfg.part_size, "sse": cfg.sse, "seed": args.seed,
                   "size_median": sizes_sorted[len(sizes_sorted) // 2], "size_max": sizes_sorted[-1],
                   "blobs_over_part_size": sum(1 for s in sizes if s > cfg.part_size),
                   "generation_s": round(gen_s, 1)},
        "moto_peak_rss_mb": round(moto_rss_kb / 1024),
        "phases": [p.as_json() for p in phases],
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, phases)
    print(f"\nresults: {out}")
    return 0


def print_table(report: dict[str, Any], phases: list[Phase]) -> None:
    p, m = report["params"], report["machine"]
    print(f"\nbackup throughput, {report['date'][:10]}, {m['cpus']} CPUs, {m['mem_gib']} GiB, moto {m['moto']}; "
          f"{p['blobs']} blobs, {p['bytes'] / MB:.0f} MB (median {p['size_median'] / 1024:.0f} KiB, "
          f"max {p['size_max'] / MB:.0f} MB), {p['workers']} workers, load {report['load_avg_before'][0]:.1f}"
          f" -> {report['load_avg_after'][0]:.1f}")
    print(f"{'phase':<24} {'blobs':>7} {'MB':>8} {'time':>8} {'MB/s':>7} {'blobs/s':>8} {'skipped':>8} "
          f"{'client CPU':>10} {'moto CPU':>9}")
    for ph in phases:
        moto = f"{ph.moto_cpu_s:.1f} s" if ph.moto_cpu_s is not None else "-"
        print(f"{ph.name:<24} {ph.blobs:>7} {ph.bytes / MB:>8.0f} {ph.seconds:>7.1f}s {ph.mb_s:>7.1f} "
              f"{ph.blobs_s:>8.0f} {ph.skipped:>8} {ph.client_cpu_s:>8.1f} s {moto:>9}")
    inc = phases[-1]
    d = inc.detail
    print(f"incremental: {inc.seconds:.1f} s = scan {d['scan_s']:.1f} s + bucket listing {d['bucket_list_s']:.1f} s"
          f" + upload {d['upload_s']:.1f} s; sent {d['keys_sent']} keys, exactly the new blobs: "
          f"{d['sent_exactly_the_new_blobs']}; skipped {inc.skipped}")


if __name__ == "__main__":
    sys.exit(main())
