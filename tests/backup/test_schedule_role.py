"""The backup_schedule role on this machine (no systemd): site.yml --tags
schedule installs the supervised scheduler, which runs the export reminder at
its inventory time against moto on loopback and records its success as
metrics; check mode first changes nothing, a second run changes nothing. The
supervisor program is removed at the end. Its launcher, environment, state and
metrics live in the test's own directory."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_schedule import make_env, metrics, moto_url  # noqa: F401 - moto_url is a fixture

from moodleops.inventory import load_inventory
from moodleops.platform.ansible import run_playbook

pytestmark = pytest.mark.stack

CONF = Path("/etc/supervisor/conf.d/moodleops-backup-scheduler.conf")


def supervisorctl(*argv: str) -> str:
    return subprocess.run(["supervisorctl", *argv], capture_output=True, text=True, timeout=60, check=False).stdout


@pytest.fixture
def cleanup() -> Iterator[None]:
    try:
        yield
    finally:
        CONF.unlink(missing_ok=True)
        supervisorctl("update", "moodleops-backup-scheduler")


def test_site_installs_the_supervised_scheduler_which_runs_a_job_at_its_time(
        tmp_path: Path, moto_url: str, cleanup: None) -> None:  # noqa: F811
    # Two minutes ahead: the scheduler is up by then, and the test waits at most ~3 minutes.
    at = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%H:%M")
    env = make_env(tmp_path, moto_url, backup_schedule={"export-reminder": {"at": at, "late_after_hours": 50}},
                   backup_schedule_runner="supervisor")
    mdir, lib = tmp_path / "textfile", tmp_path / "lib"
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({
        "backup_schedule_metrics_dir": str(mdir), "backup_schedule_launcher": str(lib / "backup-jobs"),
        "backup_schedule_env_file": str(tmp_path / "etc" / "backup-jobs.env"),
        "backup_schedule_log": str(tmp_path / "jobs.log"),
        "backup_schedule_environment": {"AWS_ACCESS_KEY_ID": "moodleops-test",
                                        "AWS_SECRET_ACCESS_KEY": "moodleops-test"}}))
    inv = load_inventory(str(env))
    args = ["--tags", "schedule", "-e", f"@{extra}"]

    check = run_playbook(inv, "site.yml", [*args, "--check"], echo=False)
    assert check.ok, "\n".join(check.output[-40:])
    assert check.total_changed > 0 and not CONF.exists() and not lib.exists() and not mdir.exists()
    # The secret never reaches the output.
    first = run_playbook(inv, "site.yml", args, echo=False)
    assert first.ok and first.total_changed > 0, "\n".join(first.output[-40:])
    assert "moodleops-test" not in "\n".join(check.output + first.output)
    assert (tmp_path / "etc" / "backup-jobs.env").stat().st_mode & 0o077 == 0
    assert "RUNNING" in supervisorctl("status", "moodleops-backup-scheduler")
    m = metrics(mdir, "export-reminder")
    assert "moodleops_job_scheduled_timestamp_seconds" in m and "moodleops_job_last_attempt_timestamp_seconds" not in m

    again = run_playbook(inv, "site.yml", args, echo=False)
    assert again.ok and again.total_changed == 0, "\n".join(line for line in again.output if "changed:" in line)
    recheck = run_playbook(inv, "site.yml", [*args, "--check"], echo=False)
    assert recheck.ok and recheck.total_changed == 0, "\n".join(recheck.output[-40:])

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        m = metrics(mdir, "export-reminder")
        if "moodleops_job_last_success_timestamp_seconds" in m or m.get("moodleops_job_last_run_failed") == 1:
            break
        time.sleep(2)
    log = (tmp_path / "jobs.log").read_text() if (tmp_path / "jobs.log").exists() else ""
    assert m.get("moodleops_job_last_run_failed") == 0, log[-3000:]
    started = datetime.fromtimestamp(m["moodleops_job_last_attempt_timestamp_seconds"], UTC)
    assert started.strftime("%H:%M") == at, log[-3000:]
    assert "moodleops scheduled export-reminder: succeeded" in log
