"""One rehearsal command at a time: `prepare` in the background and `up` in the
foreground wait for each other (state.json and the base are shared)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from moodleops.rehearsal.state import exclusive

HOLD = """
import sys, time
from pathlib import Path
from moodleops.rehearsal.state import exclusive
with exclusive(Path(sys.argv[1]), print):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_command_waits_and_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    said: list[str] = []
    started = time.monotonic()
    with exclusive(tmp_path, said.append):
        waited = time.monotonic() - started
    holder.wait(timeout=10)
    assert said == [f"waiting for another rehearsal command to finish (pid {holder.pid})"]
    assert waited >= 0.5


def test_a_killed_holder_releases_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "600"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=10)
    said: list[str] = []
    with exclusive(tmp_path, said.append):
        pass
    assert said == []
