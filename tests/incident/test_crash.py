"""kill -9 of the runbook's process group at several points of a school
suspension and of its reinstatement, then `incident recover`: no account is
left changed without a journal trace, nothing new starts meanwhile, and once
reinstated every account is exactly as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import FAULT_ENV

pytestmark = pytest.mark.stack

MOODLEOPS = str(Path(sys.executable).with_name("moodleops"))
WHY = ("--reason", "test: crash", "--ticket", "TEST-K")
# after-intent: before the first chunk; mid-chunk: PHP stopped inside chunk 2 (chunk 1 acknowledged);
# before-last-ack: PHP has applied everything, the last acknowledgement is not journalled yet.
POINTS = ("after-intent", "mid-chunk", "before-last-ack")


def _suspended(world) -> dict[str, int]:
    return {k: v["suspended"] for k, v in world.users_state().items()}


def _category_visible(world) -> int:
    idn = world.inv.school(world.codes["a"]).category_idnumber
    return int(world.runbook().helper.read(categories=(idn,)).categories[idn]["visible"])


def _cli(world, *args: str) -> list[str]:
    return [*world.cli_args(), "incident", *args, "--journal-copy", str(world.journal_copy)]


def _run_and_kill(world, point: str, *args: str) -> None:
    """Start `moodleops incident ARGS` in its own process group, wait until it stalls
    at `point`, kill -9 the whole group (as when the SSH session dies)."""
    marker_dir = Path(tempfile.mkdtemp(prefix="moodleops-fault-"))
    marker_dir.chmod(0o777)   # the PHP side (web user) writes the marker of the mid-chunk point
    marker = marker_dir / "reached"
    env = {**os.environ, FAULT_ENV: f"{point}:{marker}"}
    proc = subprocess.Popen([MOODLEOPS, *_cli(world, *args)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the runbook ended (exit {proc.returncode}) before reaching {point}: "
                            f"{proc.stdout.read() if proc.stdout else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"the runbook never reached {point}")
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        marker.unlink(missing_ok=True)
        marker_dir.rmdir()


def _incomplete(world):
    found = world.runbook().journal.incomplete()
    assert len(found) == 1, [i.id for i in found]
    return found[0]


def _check_traced_and_blocked(world, before: dict[str, int], capsys) -> str:
    """Every account Moodle now has changed is in the incomplete intent; a new incident is refused."""
    inc = _incomplete(world)
    planned = {e["label"] for e in inc.entries}
    now = _suspended(world)
    changed = {world.username(k) for k in now if now[k] != before[k]}
    assert changed <= planned, f"changed without a journal trace: {changed - planned}"
    capsys.readouterr()
    assert main(_cli(world, "suspend", "--users", world.username("b1"), *WHY, "--apply")) == 7
    err = capsys.readouterr().err
    assert inc.id in err and "incident recover" in err
    assert _suspended(world)["b1"] == before["b1"]
    return inc.id


def _recover(world, capsys, *extra: str) -> str:
    assert main(_cli(world, "recover")) == 0
    dry = capsys.readouterr().out
    assert "INCOMPLETE" in dry and "dry run: nothing changed" in dry
    assert main(_cli(world, "recover", *extra, "--apply")) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert not world.runbook().journal.incomplete()
    return dry + out


@pytest.mark.parametrize("point", POINTS)
def test_killed_school_suspension_is_recovered(world, capsys, point) -> None:
    before = _suspended(world)
    _run_and_kill(world, point, "suspend", "--school", world.codes["a"], "--hide-category",
                  "--chunk-size", "2", *WHY, "--apply")
    inc = _check_traced_and_blocked(world, before, capsys)
    if point == "before-last-ack":
        assert "applied in Moodle but not acknowledged" in _recover(world, capsys)
    else:
        _recover(world, capsys)
    # Completed: the whole school is suspended, the category hidden, as the intent said.
    now = _suspended(world)
    for short in ("a1", "a2", "a4", "e1", "e2", "e3"):
        assert now[short] == 1, short
    assert now["b1"] == before["b1"] and now["ab"] == before["ab"]
    assert _category_visible(world) == 0
    assert main(_cli(world, "reinstate", inc, "--apply")) == 0, capsys.readouterr()
    assert _suspended(world) == before
    assert _category_visible(world) == 1
    assert world.runbook().journal.incidents()[inc].state == "reinstated"


def test_killed_suspension_undone_by_recover(world, capsys) -> None:
    before = _suspended(world)
    _run_and_kill(world, "mid-chunk", "suspend", "--school", world.codes["a"], "--chunk-size", "2", *WHY, "--apply")
    inc = _check_traced_and_blocked(world, before, capsys)
    assert "undone:" in _recover(world, capsys, "--undo")
    assert _suspended(world) == before
    assert world.runbook().journal.incidents()[inc].state == "undone"
    assert main(_cli(world, "reinstate", inc, "--apply")) == 2
    assert "undone" in capsys.readouterr().err


@pytest.mark.parametrize("point", POINTS)
def test_killed_reinstatement_is_recovered(world, capsys, point) -> None:
    before = _suspended(world)
    assert main(_cli(world, "suspend", "--school", world.codes["a"], "--hide-category", *WHY, "--apply")) == 0
    inc = json.loads(world.runbook().journal.path.read_text().splitlines()[-1])["incident"]
    suspended = _suspended(world)
    capsys.readouterr()
    _run_and_kill(world, point, "reinstate", inc, "--chunk-size", "2", "--apply")
    reinstating = _incomplete(world)
    assert reinstating.intent["reinstates"] == inc
    now = _suspended(world)
    moved = {world.username(k) for k in now if now[k] != suspended[k]}
    assert moved <= {e["label"] for e in reinstating.entries}
    _recover(world, capsys)
    assert _suspended(world) == before
    assert _category_visible(world) == 1
    assert world.runbook().journal.incidents()[inc].state == "reinstated"
