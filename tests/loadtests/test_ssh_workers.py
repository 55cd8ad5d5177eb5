"""Remote Locust workers started by the toolkit over SSH, for real: an sshd
this test starts on 127.0.0.1 (its own port, generated host and client keys,
stopped at the end) plays the load generator; master, workers and Moodle are
all on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_sshd import Sshd, keygen
from moodleops.loadtests import fixture as fx
from moodleops.loadtests.model import load_model
from moodleops.loadtests.runner import RunRequest, make_plan, run
from moodleops.loadtests.ssh import RemoteWorkers, SshOptions, WorkerHostError
from prom_loopback import free_port

from moodleops.cli import main
from moodleops.inventory import Host, Inventory, load_inventory
from moodleops.site import Site

LOOP = Host("gen-loop", "127.0.0.1", ("loadgen",))
USERS = 4          # smoke weights 3:1 -> three students and a trainer


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshOptions]:
    d = Sshd.start(tmp_path_factory.mktemp("sshd"))
    yield SshOptions(user="root", port=d.port, identity=d.key, known_hosts=d.known_hosts,
                     remote_dir=str(d.d / "remote"))
    d.stop()


def test_workers_that_do_not_leave_are_killed_over_ssh(sshd: SshOptions, tmp_path: Path) -> None:
    """A worker whose master never answers: stop() kills it through its pid file
    and removes the plan; nothing is left on the load generator."""
    # A real plan (the worker loads it and then waits for its master).
    record = {"quiz_questions": 2, "password": "not-in-argv", "course_id": 1, "forum_cmid": 1, "discussion_id": 1,
              "discussion_post_id": 1, "resource_cmid": 1, "quiz_cmid": 1, "assign_cmid": 1,
              "students": [{"username": f"s{i}"} for i in range(9)], "trainers": [{"username": "t1"}]}
    req = RunRequest(shape="smoke", users=4, duration_s=20, workers=1, think_scale=0.01, scale=1.0, start_hour=0.0,
                     results_dir=tmp_path, target="http://127.0.0.1:9")
    inv = load_inventory("local")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(req, inv, load_model(inv), record)), encoding="utf-8")
    workers = RemoteWorkers.with_options([LOOP], sshd)
    workers.start(plan, 1, "127.0.0.1", free_port())       # no master there
    remote = Path(sshd.remote_dir)
    deadline = time.monotonic() + 10
    while not list(remote.glob("worker-*.pid")) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(next(remote.glob("worker-*.pid")).read_text().strip())
    assert oct(next(remote.glob("plan-*.json")).stat().st_mode & 0o777) == "0o600"
    # The secret travelled on stdin, never in a command line.
    assert b"not-in-argv" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    problems = workers.stop(wait_s=1)
    assert problems == ["worker 0 on gen-loop did not stop with the master: killed"]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    assert list(remote.iterdir()) == []


def test_an_unknown_host_key_is_refused_in_one_line(sshd: SshOptions, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} {keygen(tmp_path / 'other')}\n", encoding="ascii")
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    bad = SshOptions(user="root", port=sshd.port, identity=sshd.identity, known_hosts=other,
                     remote_dir=sshd.remote_dir)
    with pytest.raises(WorkerHostError) as caught:
        RemoteWorkers.with_options([LOOP], bad).start(plan, 1, "127.0.0.1", free_port())
    line = caught.value.line()
    assert line.startswith(f"SSH 127.0.0.1:{sshd.port} (load generator gen-loop): the host key changed: "
                           f"{other} line 1 holds another key for [127.0.0.1]:{sshd.port}"), line
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {other}" in line, line


@pytest.mark.stack
def test_a_run_with_two_workers_started_over_ssh(sshd: SshOptions, site: Site, local_inventory: Inventory,
                                                 tmp_path: Path, moodle) -> None:
    fxdir = tmp_path / "fixtures"
    prefix = fx.new_prefix()
    # Sized by the model for this run (4 users over 2 workers): each worker has
    # its own share of the accounts, so the shape's peak needs a spare per worker.
    assert main(["loadtest", "prepare", "--prefix", prefix, "--students", "1", "--trainers", "1",
                 "--for-shape", "smoke", "--users", str(USERS), "--workers", "2", "--courses", "2",
                 "--questions", "2", "--fixture-dir", str(fxdir)]) == 0
    try:
        req = RunRequest(shape="smoke", users=USERS, duration_s=20, workers=2, think_scale=0.01, scale=1.0,
                         start_hour=0.0, results_dir=tmp_path / "run", target=site.wwwroot,
                         ssh_hosts=(LOOP,), ssh=sshd)
        summary = run(req, local_inventory, load_model(local_inventory), fx.load_fixture(fxdir, prefix),
                      echo=False, site=site)
    finally:
        assert main(["loadtest", "cleanup", "--prefix", prefix, "--yes", "--fixture-dir", str(fxdir)]) == 0
    assert summary["workers"] == 2
    assert summary["totals"]["failures"] == 0, summary["pages"]
    # The workers' requests reached the master (requests.csv) and Locust's statistics alike.
    assert summary["steady"]["totals"]["requests"] == summary["totals"]["requests"] > 0
    assert summary["pages"]["quiz:submit"]["requests"] >= 2
    assert list(Path(sshd.remote_dir).iterdir()) == []          # plan and pid files removed
