"""Scheduled backup jobs: the nightly backup, the prune and the export reminder.

The times and how late each job may be come from the inventory
(`backup_schedule`, group_vars); the playbooks start them (systemd timers in
production, `moodleops backup scheduler` under supervisor here). Every run goes
through `run_job`, which writes its attempt durably before starting the
command and its outcome after, then renders a Prometheus textfile (read by
node-exporter's textfile collector): the scrape only reads a file, and a job
killed mid-way still shows as attempted and not succeeded.

The label is `task`, not `job`: `job` is the scrape job's label, and
Prometheus renames a scraped `job` to `exported_job`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moodleops.inventory import Inventory
from moodleops.inventory.errors import InventoryError

# Job name -> the moodleops command it runs, and the exit statuses that count as
# success. export-status exits 1 when schools are pending: that is the reminder
# doing its work (its output is the reminder), not a failure.
JOBS: dict[str, tuple[tuple[str, ...], frozenset[int]]] = {
    "backup": (("backup", "run"), frozenset({0})),
    "prune": (("backup", "prune", "--confirm"), frozenset({0})),
    "export-reminder": (("backup", "export-status"), frozenset({0, 1})),
}
DEFAULT_METRICS_DIR = Path("/var/lib/prometheus/node-exporter")
_AT = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class Scheduled:
    job: str
    at: str                 # HH:MM, UTC, every day
    late_after_hours: int   # alert when the last success is older than this


def schedule_config(inv: Inventory) -> dict[str, Scheduled]:
    """The inventory's `backup_schedule`, checked: a job left out is not scheduled."""
    f = str(inv.env_dir / "group_vars" / "all.yml")
    raw = inv.vars.get("backup_schedule") or {}
    if not isinstance(raw, dict):
        raise InventoryError(f, "backup_schedule", raw, f"a mapping of {', '.join(JOBS)} to {{at, late_after_hours}}")
    out = {}
    for job, spec in raw.items():
        if job not in JOBS:
            raise InventoryError(f, "backup_schedule", job, f"one of {', '.join(JOBS)}")
        if not isinstance(spec, dict) or set(spec) != {"at", "late_after_hours"}:
            raise InventoryError(f, f"backup_schedule.{job}", spec, "a mapping with at and late_after_hours")
        at = spec["at"]
        if not isinstance(at, str) or not _AT.match(at):
            raise InventoryError(f, f"backup_schedule.{job}.at", at, "a time HH:MM (UTC, quoted)")
        late = spec["late_after_hours"]
        if isinstance(late, bool) or not isinstance(late, int) or not 1 <= late <= 24 * 60:
            raise InventoryError(f, f"backup_schedule.{job}.late_after_hours", late, "an integer from 1 to 1440")
        out[job] = Scheduled(job, at, late)
    return out


def next_run(at: str, now: datetime) -> datetime:
    """The next HH:MM UTC strictly after `now`."""
    h, m = (int(x) for x in at.split(":"))
    t = now.astimezone(UTC).replace(hour=h, minute=m, second=0, microsecond=0)
    return t if t > now else t + timedelta(days=1)


# --- state and metrics -----------------------------------------------------------

def _state_path(state_dir: Path, job: str) -> Path:
    return state_dir / "schedule" / f"{job}.json"


def read_state(state_dir: Path, job: str) -> dict[str, Any]:
    try:
        data = json.loads(_state_path(state_dir, job).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_state(state_dir: Path, job: str, state: dict[str, Any]) -> None:
    _write_atomic(_state_path(state_dir, job), json.dumps(state, sort_keys=True) + "\n", 0o600)


_HELP = {
    "moodleops_job_scheduled_timestamp_seconds": "Unix time the job was first scheduled on this host.",
    "moodleops_job_last_attempt_timestamp_seconds": "Unix time the job last started.",
    "moodleops_job_last_success_timestamp_seconds": "Unix time the job last finished successfully.",
    "moodleops_job_last_failure_timestamp_seconds": "Unix time the job last finished with a failure.",
    "moodleops_job_last_exit_status": "Exit status of the job's last finished run (see moodleops backup --help).",
    "moodleops_job_last_duration_seconds": "Duration of the job's last finished run.",
    "moodleops_job_last_run_failed": "1 if the job's last finished run failed, else 0.",
    "moodleops_job_running": "1 while the job runs (or if it was killed and has not run since), else 0.",
    "moodleops_job_late_after_seconds": "Age of the last success past which the job is late (inventory).",
}
_FIELDS = {
    "moodleops_job_scheduled_timestamp_seconds": "since",
    "moodleops_job_last_attempt_timestamp_seconds": "last_attempt",
    "moodleops_job_last_success_timestamp_seconds": "last_success",
    "moodleops_job_last_failure_timestamp_seconds": "last_failure",
    "moodleops_job_last_exit_status": "last_exit_status",
    "moodleops_job_last_duration_seconds": "last_duration_seconds",
}


def render_metrics(job: str, state: dict[str, Any], sched: Scheduled | None) -> str:
    """The job's textfile: a metric is left out until it has a value (no fake zero timestamps)."""
    values: dict[str, float] = {m: float(state[k]) for m, k in _FIELDS.items() if state.get(k) is not None}
    if state.get("last_exit_status") is not None:
        values["moodleops_job_last_run_failed"] = 0.0 if state.get("last_ok") else 1.0
    values["moodleops_job_running"] = 1.0 if state.get("running") else 0.0
    if sched is not None:
        values["moodleops_job_late_after_seconds"] = float(sched.late_after_hours * 3600)
    lines = []
    for name, help_text in _HELP.items():
        if name in values:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                      f'{name}{{task="{job}"}} {values[name]:.17g}']
    return "\n".join(lines) + "\n"


def write_metrics(metrics_dir: Path, job: str, state: dict[str, Any], sched: Scheduled | None,
                  *, check: bool = False) -> bool:
    """Write the job's textfile if its content changed; True if it did (or would, with check)."""
    path = metrics_dir / f"moodleops_job_{job.replace('-', '_')}.prom"
    text = render_metrics(job, state, sched)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    if not check:
        # node-exporter only reads *.prom, so the temporary name is never half-read.
        _write_atomic(path, text)
    return True


def publish(state_dir: Path, metrics_dir: Path, schedule: dict[str, Scheduled], *,
            check: bool = False, now: float | None = None) -> list[str]:
    """Record when each scheduled job was first scheduled and write every textfile;
    returns what changed (idempotent: nothing the second time)."""
    changed = []
    for job, sched in schedule.items():
        state = read_state(state_dir, job)
        if "since" not in state:
            state["since"] = time.time() if now is None else now
            if not check:
                write_state(state_dir, job, state)
            changed.append(f"{job}: scheduled from now")
        if write_metrics(metrics_dir, job, state, sched, check=check):
            changed.append(f"{job}: metrics {metrics_dir}")
    return changed


def run_job(job: str, inventory: str, state_dir: Path, metrics_dir: Path, sched: Scheduled | None,
            *, argv_prefix: tuple[str, ...] | None = None, log: Callable[[str], None] | None = None) -> int:
    """One run of `job`: attempt recorded (durably) before, outcome after; the
    command's own exit status is returned. The command runs as a child process
    so that its crash or kill is an exit status here, recorded as a failure."""
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    command, ok_statuses = JOBS[job]
    state = read_state(state_dir, job)
    started = time.time()
    state.setdefault("since", started)
    state.update(last_attempt=started, running=True)
    write_state(state_dir, job, state)
    write_metrics(metrics_dir, job, state, sched)
    prefix = argv_prefix or (sys.executable, "-m", "moodleops.cli")
    argv = [*prefix, "--inventory", inventory, *command]
    say(f"moodleops scheduled {job}: started {datetime.fromtimestamp(started, UTC):%Y-%m-%dT%H:%M:%SZ}: "
        f"moodleops --inventory {inventory} {' '.join(command)}")
    try:
        status = subprocess.run(argv, check=False).returncode
    except OSError as exc:
        say(f"moodleops scheduled {job}: could not start {prefix[0]}: {exc.strerror}")
        status = 127
    ended = time.time()
    ok = status in ok_statuses
    state.update(running=False, last_exit_status=status, last_ok=ok, last_duration_seconds=round(ended - started, 3))
    state["last_success" if ok else "last_failure"] = ended
    write_state(state_dir, job, state)
    write_metrics(metrics_dir, job, state, sched)
    say(f"moodleops scheduled {job}: {'succeeded' if ok else 'FAILED'} (exit {status}) "
        f"after {ended - started:.0f} s")
    return status


def run_forever(inventory: str, state_dir: Path, metrics_dir: Path, schedule: dict[str, Scheduled], *,
                clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                sleep: Callable[[float], None] = time.sleep, rounds: int | None = None) -> None:
    """The supervised runner (hosts without systemd): each job at its time, one
    at a time (backup and prune share a lock anyway). A time missed while the
    runner was down is not caught up: the late alert says so."""
    publish(state_dir, metrics_dir, schedule)
    due = {job: next_run(s.at, clock()) for job, s in schedule.items()}
    done = 0
    while rounds is None or done < rounds:
        job = min(due, key=lambda j: due[j])
        wait = (due[job] - clock()).total_seconds()
        if wait > 0:
            # Sleep in short steps: a clock jump or a suspended host does not push a job a day away.
            sleep(min(wait, 60.0))
            continue
        run_job(job, inventory, state_dir, metrics_dir, schedule[job])
        due[job] = next_run(schedule[job].at, clock())
        done += 1
