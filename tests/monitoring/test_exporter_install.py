"""The monitoring host runs the exporter from the toolkit's wheel with only the
`host` extra: no Ansible, Locust, boto3 or pyinfra in its virtualenv, no
checkout copy, and the rest of the CLI says plainly that it is not there."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.platform.ansible import PlaybookResult

pytestmark = pytest.mark.stack

DEFAULTS = yaml.safe_load((REPO_ROOT / "playbooks/roles/platform_defaults/defaults/main.yml").read_text())
PREFIX = Path(DEFAULTS["moodleops_toolkit_prefix"])
VENV = PREFIX / "venv"
CONTROLLER_ONLY = {"ansible", "ansible-core", "ansible-lint", "locust", "boto3", "botocore", "pyinfra", "pytest"}


def _venv(*args: str) -> subprocess.CompletedProcess[str]:
    # cwd "/": from the checkout, `python -c` would import the checkout's moodleops, not the venv's.
    return subprocess.run([str(VENV / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=120, check=False, cwd="/")


def test_the_exporter_venv_holds_the_wheel_and_the_host_extra_only(provisioned: PlaybookResult | None) -> None:
    listed = _venv("python", "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    assert listed.returncode == 0, listed.stderr
    # PEP 503 names: pip lists a distribution as its metadata spells it (prometheus_client).
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)}
    assert names & CONTROLLER_ONLY == set()
    assert {"ut-moodle-ops", "psycopg", "prometheus-client", "numpy", "pyyaml"} <= names
    # Installed from the wheel, not editable from a copy of the checkout.
    shown = _venv("python", "-c", "import moodleops, json; print(json.dumps(moodleops.__file__))")
    assert "/site-packages/moodleops/" in json.loads(shown.stdout)
    assert not (PREFIX / "src").exists()
    assert (PREFIX / "inventory" / "schools.yml").is_file()
    assert not list((PREFIX / "inventory").rglob("vault.yml"))


def test_the_lean_cli_serves_storage_and_refuses_the_rest_in_one_line(provisioned: PlaybookResult | None) -> None:
    assert _venv("moodleops", "storage", "serve", "--help").returncode == 0
    refused = _venv("moodleops", "backup", "list")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "needs the Python package boto3" in refused.stderr
    assert "Traceback" not in refused.stderr
