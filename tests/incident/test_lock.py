"""The platform-wide lock: two runbooks started at the same moment from two
processes -- exactly one runs, the other names the holder; a PHP writer whose
Python side was killed keeps the platform until it is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import FAULT_ENV, Who
from moodleops.platform.lock import PlatformLockBusy, platform_lock

pytestmark = pytest.mark.stack

MOODLEOPS = str(Path(sys.executable).with_name("moodleops"))
WHO = Who(reason="test: lock", ticket="TEST-L", operator="pytest")


def _argv(world, *args: str) -> list[str]:
    return [MOODLEOPS, *world.cli_args(), "incident", *args, "--journal-copy", str(world.journal_copy)]


def test_two_runbooks_at_the_same_moment_exactly_one_runs(world) -> None:
    before = world.users_state()
    go = Path(tempfile.mkdtemp()) / "go"
    # Both processes are started and ready; they are released by the same file at the same moment.
    starter = ("import os, sys, time\n"
               f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
               "from moodleops.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", starter, *_argv(world, "suspend", "--users",
                                                                      world.username(u), "--reason", "race",
                                                                      "--ticket", "TEST-L", "--apply")[1:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for u in ("b1", "b2")]
    time.sleep(1.0)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 3], (codes, outs)
    loser = outs[codes.index(3)][1]
    assert "the platform lock is held by" in loser and "incident INC-" in loser and "since" in loser, loser
    assert "nothing was changed" in loser
    winner = ("b1", "b2")[codes.index(0)]
    state = world.users_state()
    assert state[winner]["suspended"] == 1
    assert state[("b2", "b1")[codes.index(0)]] == before[("b2", "b1")[codes.index(0)]]
    go.unlink()
    go.parent.rmdir()
    rb = world.runbook()
    last = rb.journal.incidents()
    inc = next(i for i in reversed(list(last.values())) if i.action == "suspend" and i.state == "open")
    rb.run(rb.reinstate(inc.id), apply=True, who=WHO)
    assert world.users_state()[winner]["suspended"] == 0


def test_killed_python_side_does_not_free_the_platform_while_php_applies(world, capsys) -> None:
    before = {k: v["suspended"] for k, v in world.users_state().items()}
    marker_dir = Path(tempfile.mkdtemp(prefix="moodleops-fault-"))
    marker_dir.chmod(0o777)
    marker = marker_dir / "reached"
    proc = subprocess.Popen(_argv(world, "suspend", "--school", world.codes["a"], "--chunk-size", "2",
                                  "--reason", "lock", "--ticket", "TEST-L", "--apply"),
                            env={**os.environ, FAULT_ENV: f"mid-chunk:{marker}"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "never reached mid-chunk"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)   # only the Python side: PHP is still inside its chunk
        proc.wait(timeout=30)
        with pytest.raises(PlatformLockBusy, match="Moodle writer whose caller has gone"), \
                platform_lock(world.site, "test"):
            pass
        assert main([*world.cli_args(), "incident", "recover", "--apply",
                     "--journal-copy", str(world.journal_copy)]) == 3
        assert "still applying" in capsys.readouterr().err
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        marker.unlink(missing_ok=True)
        marker_dir.rmdir()
    # PHP gone: the platform is free again; recover undoes what was applied.
    deadline = time.monotonic() + 30
    while True:
        try:
            with platform_lock(world.site, "test"):
                break
        except PlatformLockBusy:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert main([*world.cli_args(), "incident", "recover", "--undo", "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 0
    assert {k: v["suspended"] for k, v in world.users_state().items()} == before


def test_upgrade_restore_and_maintenance_off_refuse_while_a_platform_incident_is_open(world, tmp_path) -> None:
    """The guard `platform upgrade --apply`, `backup restore --confirm` and `platform maintenance off`
    go through: the platform lock, then no open (or interrupted) platform incident."""
    import dataclasses

    from moodleops.incident.journal import Journal
    from moodleops.platform.guard import PlatformHeld, platform_operation
    site = dataclasses.replace(world.site, state_dir=tmp_path / "state")
    with platform_operation(site, world.inv.env, "platform upgrade"):
        pass   # no incident: allowed
    j = Journal(site.state_dir / "incidents", None, world.inv.env)
    entry = {"kind": "platform_maintenance", "id": 0, "label": "platform", "op": "change",
             "to": {"cli_maintenance": 1}, "expect": {}, "before": {"cli_maintenance": 0},
             "origin": {"cli_maintenance": 0}}
    j.append({"type": "intent", "incident": "INC-P", "action": "suspend", "at": "t", "entries": [entry]})
    with pytest.raises(PlatformHeld, match="INC-P"), platform_operation(site, world.inv.env, "backup restore"):
        pass   # interrupted platform incident
    j.append({"type": "chunk", "incident": "INC-P", "phase": "apply", "seq": 1, "of": 1, "results": [
        {"kind": "platform_maintenance", "id": 0, "status": "changed", "before": {"cli_maintenance": 0},
         "after": {"cli_maintenance": 1}}]})
    j.append({"type": "close", "incident": "INC-P", "outcome": "done"})
    with pytest.raises(PlatformHeld, match="reinstate it first"), \
            platform_operation(site, world.inv.env, "platform upgrade"):
        pass   # open platform incident
    with platform_operation(site, world.inv.env, "platform maintenance on", refuse_if_held=False):
        pass
