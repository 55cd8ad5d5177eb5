"""Time to build the rehearsal (9 LXC hosts reachable over SSH): from nothing
(no base, no debootstrap cache), from the debootstrap cache only, and from the
cached base (overlay snapshots). Removes everything it made at the end.

    .venv/bin/python bench/rehearsal_build.py [--from-scratch]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from moodleops import REPO_ROOT

DEBOOTSTRAP_CACHE = Path("/var/cache/lxc/debian")


def moodleops(*args: str) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moodleops.cli", "rehearsal", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"rehearsal {' '.join(args)} failed: {proc.stderr.strip()}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-scratch", action="store_true",
                        help="also remove the debootstrap cache (/var/cache/lxc/debian) first")
    args = parser.parse_args()
    rows = []
    moodleops("down", "--purge")
    if args.from_scratch:
        shutil.rmtree(DEBOOTSTRAP_CACHE, ignore_errors=True)
        rows.append(("up from nothing (debootstrap + packages + 9 clones)", moodleops("up")))
        moodleops("down", "--purge")
    rows.append(("up, base rebuilt from the debootstrap cache", moodleops("up")))
    rows.append(("up again (all running: checks only)", moodleops("up")))
    rows.append(("down (9 containers + network)", moodleops("down")))
    rows.append(("up from the cached base (9 overlay clones)", moodleops("up")))
    rows.append(("status", moodleops("status")))
    rows.append(("down", moodleops("down")))
    width = max(len(r[0]) for r in rows)
    for what, took in rows:
        print(f"{what:<{width}}  {took:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
