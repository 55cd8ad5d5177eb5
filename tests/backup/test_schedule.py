"""Scheduled backup jobs (moodleops.backup.schedule): each run records its
attempt before and its outcome after, as textfile metrics that a real
node-exporter serves; a killed run stays "attempted, not succeeded"; the
supervised runner starts a job at its inventory time; the alert rules fire
and stay quiet in promtool. S3 is moto in server mode on loopback; no Moodle
needed (export-reminder and prune only read the bucket)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prom_loopback import free_port
from prometheus_client.parser import text_string_to_metric_families
from s3_smtp_loopback import moto_s3, wait_http

from moodleops import REPO_ROOT
from moodleops.backup import schedule
from moodleops.cli import main
from moodleops.inventory import InventoryError, load_inventory

BUCKET = "moodleops-schedule-test"
RULES = REPO_ROOT / "exporters" / "rules"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"








@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_s3(BUCKET) as url:
        yield url


def make_env(root: Path, endpoint: str, **overrides: Any) -> Path:
    """A copy of the repository's inventory whose local environment keeps its state
    under `root` and points at `endpoint`."""
    inv = root / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", inv)
    gv = inv / "local" / "group_vars" / "all.yml"
    data = yaml.safe_load(gv.read_text())
    data.update({"moodleops_state_dir": str(root / "state"), "backup_s3_bucket": BUCKET,
                 "backup_s3_endpoint_url": endpoint, "backup_s3_prefix": "sched/"}, **overrides)
    gv.write_text(yaml.safe_dump(data, sort_keys=False))
    return inv / "local"


def metrics(d: Path, job: str) -> dict[str, float]:
    text = (d / f"moodleops_job_{job.replace('-', '_')}.prom").read_text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.labels == {"task": job}
            out[s.name] = s.value
    return out


def test_inventory_schedule_is_validated_at_the_boundary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = load_inventory(str(make_env(tmp_path / "a", "")))
    assert schedule.schedule_config(good) == {
        "backup": schedule.Scheduled("backup", "01:30", 26),
        "prune": schedule.Scheduled("prune", "04:30", 50),
        "export-reminder": schedule.Scheduled("export-reminder", "06:00", 50)}
    for i, (bad, key) in enumerate([
            ({"backup": {"at": "25:00", "late_after_hours": 26}}, "backup_schedule.backup.at"),
            ({"backup": {"at": "1:30", "late_after_hours": 26}}, "backup_schedule.backup.at"),
            ({"restore": {"at": "01:30", "late_after_hours": 26}}, "backup_schedule"),
            ({"prune": {"at": "01:30", "late_after_hours": 0}}, "backup_schedule.prune.late_after_hours"),
            ({"prune": {"at": "01:30"}}, "backup_schedule.prune")]):
        env = make_env(tmp_path / f"b{i}", "", backup_schedule=bad)
        with pytest.raises(InventoryError) as err:
            schedule.schedule_config(load_inventory(str(env)))
        assert err.value.key == key
        # `inventory check` refuses it with one line naming the key.
        capsys.readouterr()
        assert main(["--inventory", str(env), "inventory", "check"]) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1 and f"{key}:" in e and "Traceback" not in e, e


def test_next_run_is_the_next_time_of_day_in_utc() -> None:
    now = datetime(2029, 3, 1, 1, 30, tzinfo=UTC)
    assert schedule.next_run("01:30", now) == datetime(2029, 3, 2, 1, 30, tzinfo=UTC)
    assert schedule.next_run("01:31", now) == datetime(2029, 3, 1, 1, 31, tzinfo=UTC)
    assert schedule.next_run("00:00", now) == datetime(2029, 3, 2, 0, 0, tzinfo=UTC)


def test_a_successful_run_is_recorded_and_node_exporter_serves_it(tmp_path: Path, moto_url: str) -> None:
    env = make_env(tmp_path, moto_url)
    mdir = tmp_path / "textfile"
    t0 = time.time()
    assert main(["--inventory", str(env), "backup", "scheduled-run", "export-reminder",
                 "--metrics-dir", str(mdir)]) == 0
    m = metrics(mdir, "export-reminder")
    assert t0 <= m["moodleops_job_last_attempt_timestamp_seconds"] <= m[
        "moodleops_job_last_success_timestamp_seconds"] <= time.time()
    assert "moodleops_job_last_failure_timestamp_seconds" not in m
    assert m["moodleops_job_last_run_failed"] == 0 and m["moodleops_job_running"] == 0
    assert m["moodleops_job_last_exit_status"] in (0, 1)
    assert m["moodleops_job_late_after_seconds"] == 50 * 3600
    # A real node-exporter's textfile collector serves exactly these, with the `task` label intact.
    port = free_port()
    proc = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={mdir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    served = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples
              if s.labels.get("task") == "export-reminder"}
    assert served == m
    assert 'node_textfile_scrape_error 0' in body


def test_a_failing_run_is_a_failure_then_a_success_clears_it(tmp_path: Path, moto_url: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"       # nothing listens there
    env = make_env(tmp_path / "down", closed)
    mdir = tmp_path / "textfile"
    status = main(["--inventory", str(env), "backup", "scheduled-run", "prune", "--metrics-dir", str(mdir)])
    assert status == 4, capsys.readouterr().err       # the job's own status: S3 failed
    m = metrics(mdir, "prune")
    assert m["moodleops_job_last_run_failed"] == 1 and m["moodleops_job_last_exit_status"] == 4
    assert "moodleops_job_last_success_timestamp_seconds" not in m
    capsys.readouterr()
    assert main(["--inventory", str(env), "backup", "schedule-status"]) == 1
    assert "prune            FAILED" in capsys.readouterr().out
    # The same state directory, S3 back: the next run succeeds and the failure stays recorded as past.
    gv = env / "group_vars" / "all.yml"
    gv.write_text(gv.read_text().replace(closed, moto_url))
    assert main(["--inventory", str(env), "backup", "scheduled-run", "prune", "--metrics-dir", str(mdir)]) == 0
    m2 = metrics(mdir, "prune")
    assert m2["moodleops_job_last_run_failed"] == 0 and m2["moodleops_job_last_exit_status"] == 0
    assert m2["moodleops_job_last_success_timestamp_seconds"] > m2["moodleops_job_last_failure_timestamp_seconds"]
    assert m2["moodleops_job_last_failure_timestamp_seconds"] == m["moodleops_job_last_failure_timestamp_seconds"]


def test_a_run_killed_mid_way_stays_attempted_not_succeeded(tmp_path: Path) -> None:
    env = make_env(tmp_path, "")
    state, mdir = tmp_path / "state", tmp_path / "textfile"
    # The job's command replaced by a long sleep; the runner is SIGKILLed while it waits.
    code = ("import sys; from pathlib import Path; from moodleops.backup import schedule as s; "
            "sys.exit(s.run_job('backup', sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), "
            "s.Scheduled('backup', '01:30', 26), argv_prefix=('sh', '-c', 'sleep 60', 'job')))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(env), str(state), str(mdir)], start_new_session=True)
    try:
        for _ in range(300):
            if schedule.read_state(state, "backup").get("running"):
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    st = schedule.read_state(state, "backup")
    assert st["running"] is True and st["last_attempt"] > 0 and "last_success" not in st
    m = metrics(mdir, "backup")
    assert m["moodleops_job_running"] == 1 and "moodleops_job_last_success_timestamp_seconds" not in m
    assert m["moodleops_job_scheduled_timestamp_seconds"] <= m["moodleops_job_last_attempt_timestamp_seconds"]


def test_publish_is_idempotent_and_check_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = make_env(tmp_path, "")
    mdir = tmp_path / "textfile"
    argv = ["--inventory", str(env), "backup", "schedule-status", "--write-metrics", "--metrics-dir", str(mdir)]
    assert main([*argv, "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("would change:") == 6 and not mdir.exists() and not (tmp_path / "state").exists()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("changed:") == 6
    assert sorted(p.name for p in mdir.iterdir()) == [
        "moodleops_job_backup.prom", "moodleops_job_export_reminder.prom", "moodleops_job_prune.prom"]
    assert main(argv) == 0 and main([*argv, "--check"]) == 0
    assert "changed" not in capsys.readouterr().out
    m = metrics(mdir, "backup")
    assert set(m) == {"moodleops_job_scheduled_timestamp_seconds", "moodleops_job_running",
                      "moodleops_job_late_after_seconds"}
    # Late counts from the first scheduling when the job never succeeded.
    state = schedule.read_state(tmp_path / "state", "backup")
    state["since"] = time.time() - 27 * 3600
    schedule.write_state(tmp_path / "state", "backup", state)
    assert main(["--inventory", str(env), "backup", "schedule-status", "--format", "json"]) == 1
    rows = {r["job"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["backup"]["late"] is True and rows["prune"]["late"] is False


def test_the_supervised_runner_starts_a_job_at_its_time(tmp_path: Path, moto_url: str) -> None:
    env = make_env(tmp_path, moto_url, backup_schedule={"export-reminder": {"at": "06:00", "late_after_hours": 50}})
    state, mdir = tmp_path / "state", tmp_path / "textfile"
    clock = [datetime(2029, 3, 1, 5, 58, 30, tzinfo=UTC)]
    ran_at: list[datetime] = []

    def sleep(s: float) -> None:
        clock[0] += timedelta(seconds=s)

    real_run = schedule.run_job

    def run_job(job: str, *a: Any, **k: Any) -> int:
        ran_at.append(clock[0])
        return real_run(job, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(schedule, "run_job", run_job)
    try:
        schedule.run_forever(str(env), state, mdir, schedule.schedule_config(load_inventory(str(env))),
                             clock=lambda: clock[0], sleep=sleep, rounds=1)
    finally:
        mp.undo()
    assert ran_at == [datetime(2029, 3, 1, 6, 0, tzinfo=UTC)]
    m = metrics(mdir, "export-reminder")
    assert m["moodleops_job_last_run_failed"] == 0 and "moodleops_job_last_success_timestamp_seconds" in m


def test_job_rules_are_valid_and_each_alert_fires_and_stays_quiet_in_promtool() -> None:
    for argv in (["check", "rules", str(RULES / "jobs.yml")], ["test", "rules", str(RULES / "jobs_test.yml")]):
        proc = subprocess.run([PROMTOOL, *argv], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load((RULES / "jobs.yml").read_text())["groups"] for r in g["rules"]}
    firing, quiet = set(), set()
    for case in yaml.safe_load((RULES / "jobs_test.yml").read_text())["tests"]:
        for a in case["alert_rule_test"]:
            (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    assert firing == alerts == quiet == {"MoodleopsJobLate", "MoodleopsJobFailed"}
    # The metric names the rules read are the ones the job writes.
    written = set(schedule.render_metrics("backup", {"since": 1, "last_attempt": 2, "last_success": 3,
                                                     "last_failure": 1, "last_exit_status": 0, "last_ok": True,
                                                     "last_duration_seconds": 1}, schedule.Scheduled("backup", "01:30", 26))
                  .split()) 
    for name in ("moodleops_job_last_success_timestamp_seconds", "moodleops_job_scheduled_timestamp_seconds",
                 "moodleops_job_late_after_seconds", "moodleops_job_last_run_failed", "moodleops_job_last_exit_status"):
        assert name in (RULES / "jobs.yml").read_text() and any(w.startswith(name + "{") for w in written)
