"""`python -m moodleops.loadtests.worker MASTER_HOST MASTER_PORT`: one Locust
worker of this installation's locustfile, whatever path the package has on the
load generator (a checkout's virtualenv, or the toolkit role's). The plan comes
from $MOODLEOPS_LOADTEST_PLAN, as for the master."""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m moodleops.loadtests.worker MASTER_HOST MASTER_PORT", file=sys.stderr)
        return 2
    host, port = argv
    os.execv(sys.executable, [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                              "--loglevel", "WARNING", "--worker", "--master-host", host, "--master-port", port])
    return 0        # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
