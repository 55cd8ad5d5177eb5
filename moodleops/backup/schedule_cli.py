"""`moodleops backup scheduled-run | scheduler | schedule-status`: the scheduled
jobs (moodleops.backup.schedule), as the playbooks start them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from moodleops.backup import schedule
from moodleops.commands import add_command
from moodleops.inventory import load_inventory
from moodleops.site import site_of

EXIT = """\
exit status:
  0  done (scheduled-run: the job succeeded; schedule-status: nothing late or failed)
  1  schedule-status: a job is late or its last run failed
  2  bad input or inventory (the job is not in backup_schedule): nothing run
  *  scheduled-run: a failed job's own exit status (see `moodleops backup --help`)
"""


def _err(msg: str) -> int:
    print(f"moodleops: error: {msg}", file=sys.stderr)
    return 2


def _setup(args: argparse.Namespace) -> tuple[Path, dict[str, schedule.Scheduled]]:
    inv = load_inventory(args.inventory)
    return site_of(inv).state_dir, schedule.schedule_config(inv)


def cmd_scheduled_run(args: argparse.Namespace) -> int:
    state_dir, sched = _setup(args)
    if args.job not in sched:
        return _err(f"job {args.job!r} is not valid (allowed: the jobs of backup_schedule: "
                    f"{', '.join(sched) or 'none'})")
    status = schedule.run_job(args.job, args.inventory, state_dir, Path(args.metrics_dir), sched[args.job])
    return 0 if status in schedule.JOBS[args.job][1] else status


def cmd_scheduler(args: argparse.Namespace) -> int:
    state_dir, sched = _setup(args)
    if not sched:
        return _err("backup_schedule is empty: no job to run (set it in the inventory's group_vars)")
    for job, s in sched.items():
        print(f"moodleops scheduler: {job} every day at {s.at} UTC", file=sys.stderr, flush=True)
    schedule.run_forever(args.inventory, state_dir, Path(args.metrics_dir), sched)
    return 0


def cmd_schedule_status(args: argparse.Namespace) -> int:
    state_dir, sched = _setup(args)
    if args.write_metrics:
        for line in schedule.publish(state_dir, Path(args.metrics_dir), sched, check=args.check):
            print(f"{'would change' if args.check else 'changed'}: {line}")
    now = time.time()
    rows, bad = [], False
    for job, s in sched.items():
        st = schedule.read_state(state_dir, job)
        ref = st.get("last_success") or st.get("since")
        late = ref is not None and now - float(ref) > s.late_after_hours * 3600
        failed = st.get("last_exit_status") is not None and not st.get("last_ok")
        bad = bad or late or failed
        rows.append({"job": job, "at": s.at, "late_after_hours": s.late_after_hours, "late": late,
                     "last_failed": failed, **{k: st.get(k) for k in (
                         "since", "last_attempt", "last_success", "last_failure", "last_exit_status", "running")}})
    if args.format == "json":
        print(json.dumps(rows))
        return 1 if bad else 0

    def t(v: float | None) -> str:
        return datetime.fromtimestamp(float(v), UTC).strftime("%Y-%m-%d %H:%M:%SZ") if v else "never"

    for r in rows:
        flag = "LATE" if r["late"] else "FAILED" if r["last_failed"] else "ok"
        print(f"{r['job']:<16} {flag:<6} daily {r['at']} UTC, late after {r['late_after_hours']} h; "
              f"last success {t(r['last_success'])}, last attempt {t(r['last_attempt'])}"
              + (f" (exit {r['last_exit_status']})" if r["last_exit_status"] is not None else "")
              + (", running" if r["running"] else ""))
    if not rows:
        print("backup_schedule is empty: no scheduled job")
    return 1 if bad else 0


def register(commands: argparse._SubParsersAction) -> None:
    def metrics(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metrics-dir", default=str(schedule.DEFAULT_METRICS_DIR), metavar="DIR",
                       help="node-exporter's textfile directory (default: %(default)s)")

    p = add_command(commands, "scheduled-run", summary="run one scheduled job and record its outcome as metrics",
                    description="Run the job (backup: `backup run`; prune: `backup prune --confirm`; "
                                "export-reminder: `backup export-status`, whose exit 1 — schools pending — "
                                "counts as success) as a child process, recording its attempt before and its "
                                "outcome after in the state directory, and as moodleops_job_* metrics in "
                                "<metrics-dir>/moodleops_job_<job>.prom. What systemd timers and the "
                                "supervised scheduler call.",
                    epilog="examples:\n  moodleops backup scheduled-run backup\n\n" + EXIT)
    p.add_argument("job", choices=tuple(schedule.JOBS), help="the job to run")
    metrics(p)
    p.set_defaults(run=cmd_scheduled_run)

    p = add_command(commands, "scheduler", summary="run the scheduled jobs at their times (supervised runner)",
                    description="For hosts without systemd: run each job of the inventory's backup_schedule "
                                "every day at its time (UTC), one at a time, forever, as `scheduled-run` "
                                "does. A time missed while it was down is not caught up (the late alert fires).",
                    epilog="examples:\n  moodleops backup scheduler\n\n" + EXIT)
    metrics(p)
    p.set_defaults(run=cmd_scheduler)

    p = add_command(commands, "schedule-status", summary="the scheduled jobs' last success, late or failed",
                    description="Each job of backup_schedule with its time, its last success and attempt, and "
                                "whether it is late (last success, or first scheduling, older than "
                                "late_after_hours) or its last run failed. --write-metrics records the first "
                                "scheduling and writes the textfiles (what the playbooks run; --check: say "
                                "what would change, write nothing).",
                    epilog="examples:\n  moodleops backup schedule-status\n"
                           "  moodleops backup schedule-status --write-metrics\n\n" + EXIT)
    metrics(p)
    p.add_argument("--write-metrics", action="store_true", help="record first scheduling, write the textfiles")
    p.add_argument("--check", action="store_true", help="with --write-metrics: write nothing, say what would change")
    p.add_argument("--format", choices=("text", "json"), default="text", help="report format (default: text)")
    p.set_defaults(run=cmd_schedule_status)
