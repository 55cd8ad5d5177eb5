"""Demonstration 4 of #13: incident runbooks from the operator's side (the
machine running the tests), through the pyinfra deploy over SSH into the
rehearsal's web1, where the toolkit role installed the toolkit: a school
suspended and reinstated exactly. Two runbooks started at the same moment on
web1 and web2: exactly one runs, the other names the holder on the other host
(the lock is the database server's, not a host's).

The school's members are made through Moodle on web1 (tests/incident/fixture.php);
their state is read from the primary over SSH, only to measure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from moodleops import REPO_ROOT
from moodleops.incident.runbook import FAULT_ENV
from moodleops.site import site_of

from .rehearsal_run import INV, SPEC, Platform, on, psql

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
SITE = site_of(INV)
LAUNCHER = "/usr/local/sbin/moodleops"
FIXTURE_DIR = "/tmp/moodleops-rehearsal-fixture"
FIXTURE_FILES = ("tests/moodle_fixture.php", "tests/incident/fixture.php", "moodleops/php/_bootstrap.php")
SCHOOL_A, SCHOOL_B = INV.schools[0], INV.schools[1]
INCIDENT_ID = re.compile(r"INC-\d{8}-\d{6}-[0-9a-f]+")
# short name -> (schools, already suspended before the incident)
USERS = {"a1": ([SCHOOL_A.code], False), "a2": ([SCHOOL_A.code], False), "a3": ([SCHOOL_A.code], True),
         "b1": ([SCHOOL_B.code], False)}


class Members:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def name(self, short: str) -> str:
        return self.prefix + short

    def suspended(self) -> dict[str, int]:
        """short name -> mdl_user.suspended, read on the primary (the last write, no replica lag)."""
        sql = (f"select username, suspended from {SITE.db_prefix}user "
               f"where username like '{self.prefix}%' and deleted = 0 order by username")
        proc = psql("web1", sql, user=SITE.db_ro_user, password="db_ro_password", db_host=SITE.db_host,
                    options="-tA -F ' '")
        assert proc.returncode == 0, proc.stderr
        rows = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        return {name.removeprefix(self.prefix): int(flag) for name, flag in rows.items()}


@pytest.fixture(scope="module")
def members(platform: Platform) -> Members:
    for rel in FIXTURE_FILES:
        dest = f"{FIXTURE_DIR}/{rel}"
        copied = on("web1", f"mkdir -p {os.path.dirname(dest)} && cat > {dest} && chmod -R a+rX {FIXTURE_DIR}",
                    (REPO_ROOT / rel).read_text(encoding="utf-8"))
        assert copied.returncode == 0, copied.stderr
    prefix = "rh" + uuid.uuid4().hex[:6]
    payload = {"action": "setup", "prefix": prefix, "with_course": False,
               "account_type_field": INV.platform.accounts.account_type_field,
               "schools": [{"code": s.code, "name": s.name, "category_idnumber": s.category_idnumber,
                            "cohort_idnumber": s.cohort_idnumber} for s in (SCHOOL_A, SCHOOL_B)],
               "users": [{"username": prefix + short, "schools": schools, "account_type": "",
                          "suspended": before} for short, (schools, before) in USERS.items()]}
    made = on("web1", f"sudo -u {SITE.web_user} {SITE.php} {FIXTURE_DIR}/tests/incident/fixture.php "
                      f"{SITE.config_php}", json.dumps(payload))
    assert made.returncode == 0 and "MOODLEOPS-JSON:" in made.stdout, made.stdout + made.stderr
    m = Members(prefix)
    assert m.suspended() == {short: int(before) for short, (_s, before) in USERS.items()}
    return m


def _pyinfra(incident: str, copy_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [PYINFRA, "-y", "playbooks/deploys/inventory.py", "playbooks/deploys/incident.py",
            "--data", f"incident={incident}", "--data", f"journal_copy={copy_dir}"]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, "MOODLEOPS_INVENTORY": INV.env})


def test_a_school_suspended_and_reinstated_through_pyinfra_over_ssh(members: Members, tmp_path: Path) -> None:
    before = members.suspended()
    proc = _pyinfra(f"suspend --school {SCHOOL_A.code} --reason 'rehearsal: demo 4' --ticket RH-4 --apply", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # The runbook ran on web1 only (the database is shared: one runner).
    assert "[web1] Success" in out and "[web2] Skipped" in out, out[-3000:]
    after = members.suspended()
    assert after == {**before, "a1": 1, "a2": 1}, after
    # The host's journal, fetched into the operator's copy.
    copy = tmp_path / f"incidents-{INV.env}-web1.jsonl"
    records = [json.loads(line) for line in copy.read_text(encoding="utf-8").splitlines()]
    intent = next(r for r in reversed(records) if r.get("type") == "intent")
    assert intent["action"] == "suspend" and intent["scope"]["schools"] == [SCHOOL_A.code], intent
    assert records[-1]["type"] == "close" and records[-1]["outcome"] == "done", records[-1]

    proc = _pyinfra(f"reinstate {intent['incident']} --apply", tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # Exactly: a3 was suspended before the incident and stays so.
    assert members.suspended() == before


def test_two_runbooks_at_the_same_moment_on_two_web_nodes_exactly_one_runs(members: Members) -> None:
    before = members.suspended()
    at = time.time() + 5
    # Both wait on the same clock (the containers share this machine's) and start at the same instant.
    # Each holds the lock 10 s once its intent is written (then goes on), so the two overlap
    # whatever the hosts' speed: a one-account suspension alone takes about a second.
    def runbook(node: str, user: str) -> subprocess.CompletedProcess[str]:
        return on(node, f"python3 -c 'import time; time.sleep(max(0, {at} - time.time()))' && sudo env "
                        f"{FAULT_ENV}=after-intent:/tmp/race-{user}:10 {LAUNCHER} "
                        f"incident suspend --users {members.name(user)} --reason 'rehearsal: race' "
                        "--ticket RH-4L --apply --journal-copy -")
    with ThreadPoolExecutor(2) as pool:
        web1, web2 = pool.map(runbook, ("web1", "web2"), ("a1", "b1"))
    codes = {"web1": web1.returncode, "web2": web2.returncode}
    assert sorted(codes.values()) == [0, 3], (codes, web1.stdout + web1.stderr, web2.stdout + web2.stderr)
    winner = min(codes, key=lambda n: codes[n])
    loser_out = (web1 if winner == "web2" else web2).stderr
    winner_name = on(winner, "hostname").stdout.strip().split(".")[0]
    assert "the platform lock is held by" in loser_out and f"on {winner_name}: incident INC-" in loser_out, loser_out
    assert f"connection from {SPEC.host(winner).address}" in loser_out and "nothing was changed" in loser_out
    won_user = "a1" if winner == "web1" else "b1"
    assert members.suspended() == {**before, won_user: 1}

    done = web1 if winner == "web1" else web2
    incident = INCIDENT_ID.search(done.stdout + done.stderr)
    assert incident, done.stdout + done.stderr
    undo = on(winner, f"sudo {LAUNCHER} incident reinstate {incident.group(0)} --apply --journal-copy -")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert members.suspended() == before


def test_a_runbook_killed_on_web1_is_recovered_exactly_from_the_operators_side(members: Members,
                                                                             tmp_path: Path) -> None:
    """The runbook on web1 dies in the middle of a chunk (kill -9 of its whole
    session there, PHP included, as when the node's SSH session and its
    processes are lost): what Moodle changed is in the journal's intent, a new
    incident is refused, and `incident recover --apply` through the pyinfra
    deploy completes it; reinstating it then gives back exactly the state before."""
    before = members.suspended()
    marker_dir = f"/tmp/moodleops-fault-{uuid.uuid4().hex[:8]}"
    ticket = f"RH-4K-{uuid.uuid4().hex[:6]}"
    marker = f"{marker_dir}/reached"
    # Its own session on web1 (setsid), so that the kill below takes every process of it.
    started = on("web1", f"mkdir -m 0777 {marker_dir} && sudo -n env {FAULT_ENV}=mid-chunk:{marker} setsid -f "
                         f"{LAUNCHER} incident suspend --school {SCHOOL_A.code} --chunk-size 1 --reason "
                         f"'rehearsal: killed' --ticket {ticket} --apply --journal-copy - > {marker_dir}/log 2>&1")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 240
    while on("web1", f"test -f {marker}").returncode != 0:
        assert time.monotonic() < deadline, on("web1", f"cat {marker_dir}/log").stdout
        time.sleep(0.5)
    killed = on("web1", f"sid=$(ps -o sid= -p $(pgrep -f -- '--ticket {ticket}' | head -1)) && "
                        "sudo -n pkill -KILL -s $sid && echo killed $sid")
    assert killed.returncode == 0 and "killed" in killed.stdout, killed.stdout + killed.stderr
    # Whatever Moodle already changed is a member of school A (the intent's scope), nobody else.
    changed = {k for k, v in members.suspended().items() if v != before[k]}
    # (chunk 1 acknowledged, the kill inside chunk 2)
    assert changed and changed <= {"a1", "a2"}, changed
    refused = _pyinfra(f"suspend --users {members.name('b1')} --reason 'rehearsal: blocked' --ticket {ticket}B "
                       "--apply", tmp_path)
    assert refused.returncode != 0 and "incident recover" in refused.stdout + refused.stderr, refused.stdout[-2000:]
    assert members.suspended()["b1"] == before["b1"]
    recovered = _pyinfra("recover --apply", tmp_path)
    assert recovered.returncode == 0, (recovered.stdout + recovered.stderr)[-3000:]
    assert members.suspended() == {**before, "a1": 1, "a2": 1}
    records = [json.loads(line) for line in (tmp_path / f"incidents-{INV.env}-web1.jsonl").read_text(
        encoding="utf-8").splitlines()]
    intent = next(r for r in reversed(records) if r.get("type") == "intent" and r.get("ticket") == ticket)
    undo = _pyinfra(f"reinstate {intent['incident']} --apply", tmp_path)
    assert undo.returncode == 0, (undo.stdout + undo.stderr)[-3000:]
    assert members.suspended() == before
    on("web1", f"sudo -n rm -rf {marker_dir}")
