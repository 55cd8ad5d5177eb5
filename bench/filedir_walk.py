"""Benchmark: the filedir walk (issue 15) at production scale on a filesystem
that answers every call late, like NFS.

Builds a synthetic filedir in a scratch directory (default 1,500,000 empty blobs
with random hash names over the 65,536 ab/cd directories, directories aged an
hour), then measures, with a delay added to every filesystem call the walk makes
(the walk's own call hook, WalkProgress.call: the injectable delayed-os layer;
default 200 us, a LAN round trip):

- the full walk (every directory listed, every blob stat'ed), writing the walk
  state;
- 1 % of the ab/cd directories changed (a blob added to each);
- the incremental walk (unchanged directories taken from the state), whose
  result is checked equal to a full walk's.

Target: the incremental walk under a tenth of the full walk. Results: a table
on stdout and bench/results/filedir_walk.json. The scratch directory is removed
at the end.

  .venv/bin/python bench/filedir_walk.py [--blobs 1500000] [--delay-us 200] [--changed 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.exporters.filedir import WalkCache, WalkProgress, walk_filedir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "filedir_walk.json"


class DelayedProgress(WalkProgress):
    """Every filesystem call of the walk waits `delay` seconds first (busy-free sleep)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0

    @contextmanager
    def call(self, path: object) -> Iterator[None]:
        self.calls += 1
        time.sleep(self.delay)
        with super().call(path):
            yield


def build(root: Path, blobs: int, rng: random.Random) -> None:
    for d in range(65536):
        (root / f"{d >> 8:02x}" / f"{d & 255:02x}").mkdir(parents=True)
    for _ in range(blobs):
        h = f"{rng.getrandbits(160):040x}"
        (root / h[:2] / h[2:4] / h).touch()
    old = time.time() - 3600
    for d in range(65536):
        os.utime(root / f"{d >> 8:02x}" / f"{d & 255:02x}", (old, old))


def walk(root: Path, state: Path, full: bool, delay: float) -> tuple[float, DelayedProgress, int]:
    progress = DelayedProgress(delay)
    cache = WalkCache(state)
    errors: list[str] = []
    t0 = time.monotonic()
    n = 0
    digest = 0
    for b in walk_filedir(root, errors, progress, cache, full):
        n += 1
        digest ^= hash(b.hash)
    cache.finish(complete=True)
    if errors:
        raise SystemExit(f"bench: walk errors: {errors[:3]}")
    return time.monotonic() - t0, progress, digest ^ n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=1_500_000)
    ap.add_argument("--delay-us", type=float, default=200.0, help="added to every filesystem call (default 200)")
    ap.add_argument("--changed", type=float, default=0.01, help="share of ab/cd directories changed (default 0.01)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.blobs < 1000 or not 0 < args.changed < 1 or args.delay_us < 0:
        print("bench: error: --blobs >= 1000, 0 < --changed < 1, --delay-us >= 0", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    delay = args.delay_us / 1e6
    work = Path(tempfile.mkdtemp(prefix="moodleops-walkbench-"))
    try:
        root, state = work / "filedir", work / "walk"
        print(f"building {args.blobs:,} blobs in {root} ...", file=sys.stderr)
        t0 = time.monotonic()
        build(root, args.blobs, rng)
        built_s = time.monotonic() - t0
        print(f"  built in {built_s:.0f} s; full walk with {args.delay_us:g} us per call ...", file=sys.stderr)
        full_s, full_p, _ = walk(root, state, True, delay)
        changed = rng.sample(range(65536), int(65536 * args.changed))
        for d in changed:
            h = f"{d:04x}" + f"{rng.getrandbits(144):036x}"
            (root / h[:2] / h[2:4] / h).touch()
        print(f"  full walk {full_s:.1f} s; {len(changed)} directories changed; incremental walk ...",
              file=sys.stderr)
        inc_s, inc_p, inc_digest = walk(root, state, False, delay)
        print(f"  incremental walk {inc_s:.1f} s; checking it against a full walk without delay ...",
              file=sys.stderr)
        _, _, ref_digest = walk(root, work / "reference", True, 0.0)
        exact = inc_digest == ref_digest
        ratio = inc_s / full_s
        doc: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                        "load": os.getloadavg()},
            "blobs": args.blobs, "delay_us": args.delay_us, "changed_dirs": len(changed),
            "full": {"seconds": round(full_s, 2), "calls": full_p.calls, "dirs_listed": full_p.dirs_listed},
            "incremental": {"seconds": round(inc_s, 2), "calls": inc_p.calls, "dirs_listed": inc_p.dirs_listed,
                            "dirs_reused": inc_p.dirs_reused},
            "ratio": round(ratio, 4), "target_ratio": 0.1, "met": ratio < 0.1, "exact": exact,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nfiledir walk, {args.blobs:,} blobs, {args.delay_us:g} us per filesystem call, "
              f"load {doc['machine']['load'][0]:.1f}")
        print("| walk        | time     | calls      | dirs listed |\n|-------------|----------|------------|-------------|")
        print(f"| full        | {full_s:7.1f} s | {full_p.calls:10,} | {full_p.dirs_listed:11,} |")
        print(f"| incremental | {inc_s:7.1f} s | {inc_p.calls:10,} | {inc_p.dirs_listed:11,} |")
        print(f"incremental / full = {ratio:.3f} (target < 0.1): {'met' if ratio < 0.1 else 'NOT met'}; "
              f"same blobs as a full walk: {'yes' if exact else 'NO'}")
        return 0 if exact else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
