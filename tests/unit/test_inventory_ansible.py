"""One validation for the commands and for Ansible: a bad value in any inventory
file stops `moodleops inventory check` and `ansible-playbook` typed by hand with
the same line, before Ansible touches any host; a good inventory reaches the
plays as the model's values."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.cli import main

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
ANSIBLE = Path(sys.executable).with_name("ansible")


def _ansible_env() -> dict[str, str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1"}
    env.pop("MOODLEOPS_ARTIFACTS", None)
    return env


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", dest, ignore=shutil.ignore_patterns("vault.yml"))
    return dest


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _set(*keys: Any, value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value
    return change


# (file relative to inventory/, environment, change, what the line must name)
BAD = [
    ("platform.yml", "production", _set("storage", "pool_warning_ratio", value=1.8),
     "storage.pool_warning_ratio: 1.8"),
    ("schools.yml", "production", _set("schools", 0, "code", value="Bad Code"), "schools[0].code: 'Bad Code'"),
    ("moodle.yml", "local", _set("core", "sha256", value="abc"), "core.sha256: 'abc'"),
    ("capacity.yml", "production", _set("billing", "timezone", value="Mars/Olympus"),
     "billing.timezone: 'Mars/Olympus'"),
    ("loadmodel.yml", "local", _set("roles", "student", "pages_per_session", value=0),
     "roles.student.pages_per_session: 0"),
    ("local/hosts.yml", "local", _set("all", "children", "web", value={"hosts": {}}),
     "all.children.web.hosts"),
    ("production/hosts.yml", "production", _set("all", "children", "monitoring", value={"hosts": {}}),
     "all.children.monitoring.hosts"),
    ("local/group_vars/all.yml", "local", _set("moodle_db_port", value="5432x"), "moodle_db_port: '5432x'"),
    ("production/group_vars/all.yml", "production", _set("moodle_dataroot", value="srv/data"),
     "moodle_dataroot: 'srv/data'"),
    ("production/group_vars/all.yml", "production", _set("backup_s3_region", value="us-east-1"),
     "backup_s3_region: 'us-east-1'"),
]


@pytest.mark.parametrize(("file", "env", "change", "named"), BAD, ids=[f"{b[0]}:{b[3].split(':')[0]}" for b in BAD])
def test_a_bad_value_is_refused_identically_by_the_cli_and_by_ansible_playbook(
        root: Path, file: str, env: str, change: Callable[[Any], None], named: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    _edit(root / file, change)
    assert main(["--inventory", str(root / env), "inventory", "check"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("moodleops: error: ") and named in line and str(root / file) in line

    # As the README tells a sysadmin to run it, with nothing from moodleops in between.
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(root / env), "playbooks/site.yml", "--check"],
                          cwd=REPO_ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert line in " ".join(out.split()), out[-3000:]
    assert "TASK [" not in out          # refused before any task ran on any host


def test_the_plays_get_the_models_values_not_the_raw_files(root: Path) -> None:
    # A value written differently from the model's form (trailing slash,
    # relative mirror) reaches Ansible in the model's form.
    _edit(root / "local/group_vars/all.yml", _set("moodle_dataroot", value="/srv/moodle/moodledata/"))
    proc = subprocess.run(
        [str(ANSIBLE), "localhost", "-i", str(root / "local"), "-m", "ansible.builtin.debug",
         "-a", ('msg="{{ moodle_dataroot }}|{{ moodle_artifact_mirror }}|{{ moodle_pins.core.version }}|'
               '{{ moodle_schools | map(attribute=\'code\') | first }}|{{ moodle_accounts.account_types | join(\',\') }}"')],
        cwd=REPO_ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from moodleops.inventory import load_inventory
    inv = load_inventory(str(root / "local"))
    expected = (f"{inv.settings.dataroot}|{inv.settings.artifact_mirror}|{inv.core.version_text}|"
                f"{inv.schools[0].code}|{','.join([*inv.platform.accounts.student_types, *inv.platform.accounts.hosted_types])}")
    assert expected in proc.stdout, proc.stdout
    assert "/srv/moodle/moodledata|" in proc.stdout


def test_no_play_or_role_reads_the_inventory_files_itself() -> None:
    offenders = []
    for path in (REPO_ROOT / "playbooks").rglob("*.yml"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(word in code for word in ("include_vars", "vars_files", "inventory/", " inventory_dir")):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert offenders == []
