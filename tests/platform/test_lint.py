"""Static checks of the playbooks: ansible-lint (production profile) and a
syntax check of every play, so a broken role never reaches a host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moodleops import REPO_ROOT

BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, env=env, check=False)


def test_ansible_lint_is_clean() -> None:
    out = _run(str(BIN / "ansible-lint"), "--nocolor", "playbooks/")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.parametrize("playbook", sorted(p.name for p in (REPO_ROOT / "playbooks").glob("*.yml")))
@pytest.mark.parametrize("env", ["local", "production", "rehearsal"])
def test_every_playbook_parses_for_every_inventory(playbook: str, env: str) -> None:
    out = _run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", f"inventory/{env}/hosts.yml",
               f"playbooks/{playbook}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_python_is_ruff_clean() -> None:
    out = _run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
