"""The pyinfra deploy playbooks/deploys/incident.py against the local stack
(@local): --dry changes nothing; a real run applies the runbook on the host and
fetches the host journal into the operator's copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moodleops import REPO_ROOT

pytestmark = pytest.mark.stack

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
MOODLEOPS = str(Path(sys.executable).with_name("moodleops"))
DEPLOY = "playbooks/deploys/incident.py"


def _pyinfra(world, incident: str, copy_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [PYINFRA, *extra, "@local", DEPLOY, "--data", f"incident={incident}",
            "--data", f"moodleops_inventory={world.inventory_dir}", "--data", f"moodleops_bin={MOODLEOPS}",
            "--data", f"journal_copy={copy_dir}"]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False)


def test_pyinfra_dry_changes_nothing(world, tmp_path) -> None:
    before = world.users_state()
    proc = _pyinfra(world, f"suspend --users {world.username('b1')} --reason r --ticket T-PY --apply",
                    tmp_path, "--dry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr   # pyinfra logs on stderr
    assert "moodleops incident suspend" in out and "Detected changes" in out
    assert world.users_state() == before
    assert not (tmp_path / f"incidents-{world.inv.env}-@local.jsonl").exists()


def test_pyinfra_runs_the_runbook_and_fetches_the_journal(world, tmp_path) -> None:
    user = world.username("b1")
    proc = _pyinfra(world, f"suspend --users {user} --reason 'pyinfra test' --ticket T-PY --apply", tmp_path, "-y")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert world.users_state()["b1"]["suspended"] == 1
    copy = tmp_path / f"incidents-{world.inv.env}-@local.jsonl"
    records = [json.loads(ln) for ln in copy.read_text().splitlines()]
    assert records[-1]["type"] == "close" and records[-1]["outcome"] == "done"
    rec = next(r for r in reversed(records) if r.get("type") == "intent")
    assert rec["incident"] == records[-1]["incident"]
    assert rec["action"] == "suspend" and rec["scope"]["users"] == [user] and rec["reason"] == "pyinfra test"
    assert copy.read_text() == world.runbook().journal.path.read_text()

    proc = _pyinfra(world, f"reinstate {rec['incident']} --apply", tmp_path, "-y")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert world.users_state()["b1"]["suspended"] == 0

    # Bad input fails the deploy and changes nothing.
    proc = _pyinfra(world, f"reinstate {rec['incident']} --apply", tmp_path, "-y")
    assert proc.returncode != 0 and "already reinstated" in proc.stdout + proc.stderr
