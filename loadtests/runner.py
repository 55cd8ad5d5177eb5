"""A headless Locust run: the plan (what to play, against what, as whom),
locust started as a subprocess (one process, or a master and K workers),
then the summary and the SLO verdict from its CSV statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.loadtests.fixture import LoadtestError
from moodleops.loadtests.model import LoadModel, Population, RoleParams, shape_load
from moodleops.loadtests.summary import build_summary, read_stats, verdict
from moodleops.loadtests.timeline import PLAN_ENV, timeline

from moodleops.inventory import Inventory, is_loopback

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS_WITHOUT_FORCE = 2000      # a typo (--users 50000) must not melt the machine
GRACE_S = 60                        # after the planned end, before the run is killed


@dataclass(frozen=True)
class RunRequest:
    shape: str
    users: int | None
    duration_s: float
    workers: int
    think_scale: float
    scale: float
    start_hour: float
    results_dir: Path
    target: str


def _think(role: RoleParams) -> dict[str, Any]:
    return {"distribution": role.think.distribution, "mean_s": role.mean_think_s,
            "min_s": role.think.min_s, "max_s": role.think.max_s}


def _weights(shape: str, student_fraction: float, detail: dict[str, float]) -> dict[str, int]:
    """Locust class weights (percent) so the user mix follows the model at the peak."""
    if shape == "smoke":
        return {"SmokeStudentUser": 3, "TrainerUser": 1, "StudentUser": 1, "NewStudentUser": 1}
    w = {"StudentUser": max(1, round(100 * student_fraction)),
         "TrainerUser": max(1, round(100 * (1 - student_fraction))), "SmokeStudentUser": 1, "NewStudentUser": 1}
    if shape == "september":
        total = detail["storm_concurrent"] + detail["background_concurrent"]
        storm = detail["storm_concurrent"] / total if total else 1.0
        trainers = 1 - student_fraction
        w.update(NewStudentUser=max(1, round(100 * storm)),
                 StudentUser=max(1, round(100 * (1 - storm - trainers))), TrainerUser=max(1, round(100 * trainers)))
    return w


def make_plan(req: RunRequest, inv: Inventory, model: LoadModel, fixture: dict[str, Any]) -> dict[str, Any]:
    pop = Population.of(inv, req.scale)
    questions = int(fixture["quiz_questions"])
    users = req.users if req.users is not None else (model.smoke.users if req.shape == "smoke" else None)
    tl = timeline(req.shape, model, pop, users=users, duration_s=req.duration_s, start_hour=req.start_hour,
                  questions=questions)
    students = [u["username"] for u in fixture["students"]]
    trainers = [u["username"] for u in fixture["trainers"]]
    if req.shape == "exam" and tl.peak_users > len(students):
        raise LoadtestError(f"--users: {tl.peak_users} exam takers need as many student accounts; the fixture "
                            f"has {len(students)} (prepare with --students {tl.peak_users} or more)")
    load = shape_load(req.shape, model, pop, questions=questions, takers=users if req.shape == "exam" else None)
    weights = _weights(req.shape, load.student_fraction, load.detail)
    exam = model.exam
    taking_s = (exam.duration_s - exam.start_window_s) / tl.compression if req.shape == "exam" else 0.0
    answering_s = (exam.duration_s - exam.start_window_s - exam.submit_window_s) / tl.compression
    actions = model.actions
    return {
        "host": req.target,
        "shape": req.shape,
        "timeline": tl.to_json(),
        "fixture": fixture,
        "password": fixture["password"],
        "accounts": {"student": students, "trainer": trainers},
        "think": {"student": _think(model.student), "trainer": _think(model.trainer)},
        "think_scale": req.think_scale,
        "actions": {"forum_post": actions.forum_post, "assign_submit": actions.assign_submit,
                    "quiz_attempt": actions.quiz_attempt},
        "weights": weights,
        "once": req.shape in ("smoke", "exam"),
        "workers": max(1, req.workers),
        "exam": {"taking_s": taking_s, "submit_window_s": exam.submit_window_s / tl.compression,
                 "think_per_question_s": max(0.2, answering_s / questions)},
        "model": {"peak_concurrent": round(load.peak_concurrent, 2),
                  "peak_arrivals_per_s": round(load.peak_arrivals_per_s, 4),
                  "peak_pages_per_s": round(load.peak_pages_per_s, 4),
                  **{k: round(v, 4) for k, v in load.detail.items()}},
        "population": {"students": pop.students, "trainers": pop.trainers, "scale": req.scale},
    }


def _locust_cmd(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--loglevel", "WARNING",
            "--stop-timeout", "15", *extra]


def run_locust(plan_path: Path, req: RunRequest, inv: Inventory, *, echo: bool = True) -> int:
    """Run locust to the end of the plan; returns its exit code (1 = some request failed)."""
    prefix = str(req.results_dir / "locust")
    env = {**os.environ, PLAN_ENV: str(plan_path)}
    out = None if echo else subprocess.DEVNULL
    reports = ["--csv", prefix, "--html", str(req.results_dir / "report.html")]
    deadline = float(json.loads(plan_path.read_text(encoding="utf-8"))["timeline"]["duration_s"]) + GRACE_S
    procs: list[subprocess.Popen[bytes]] = []
    if req.workers <= 0:
        main = subprocess.Popen(_locust_cmd(reports), env=env, cwd=req.results_dir, stdout=out, stderr=out)
    else:
        loadgen = inv.group("loadgen")
        remote = [h for h in loadgen if not is_loopback(h.address)]
        expect = req.workers
        main = subprocess.Popen(_locust_cmd([*reports, "--master", "--expect-workers", str(expect),
                                             "--master-bind-host", "0.0.0.0" if remote else "127.0.0.1"]),
                                env=env, cwd=req.results_dir, stdout=out, stderr=out)
        if remote:
            # Workers on other load generators are started there (same checkout, same plan file).
            print("start on each loadgen host: " + " ".join(
                [f"{PLAN_ENV}={plan_path}", *_locust_cmd(["--worker", "--master-host", "<this host>"])]),
                file=sys.stderr)
        else:
            for _ in range(req.workers):
                procs.append(subprocess.Popen(_locust_cmd(["--worker", "--master-host", "127.0.0.1"]), env=env,
                                              cwd=req.results_dir, stdout=subprocess.DEVNULL,
                                              stderr=out))
    try:
        code = main.wait(timeout=deadline + 30)
    except subprocess.TimeoutExpired:
        main.kill()
        main.wait()
        raise LoadtestError(f"locust did not stop {deadline + 30:.0f} s after start; killed") from None
    finally:
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code


def run(req: RunRequest, inv: Inventory, model: LoadModel, fixture: dict[str, Any], *,
        echo: bool = True) -> dict[str, Any]:
    """Plan, run, judge. Writes plan.json, locust_*.csv, report.html and summary.json
    into the results directory and returns the summary."""
    if req.users is not None and req.users > MAX_USERS_WITHOUT_FORCE:
        raise LoadtestError(f"--users: {req.users} is not valid (1 to {MAX_USERS_WITHOUT_FORCE})")
    req.results_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(req, inv, model, fixture)
    plan_path = req.results_dir / "plan.json"
    plan_path.touch(mode=0o600)
    plan_path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
    started = time.monotonic()
    run_locust(plan_path, req, inv, echo=echo)
    elapsed = time.monotonic() - started
    stats = req.results_dir / "locust_stats.csv"
    if not stats.is_file():
        raise LoadtestError(f"locust wrote no statistics ({stats}); see its output above")
    pages, total = read_stats(stats)
    violations = verdict(pages, total, model.slo)
    summary = build_summary(pages=pages, total=total, slo=model.slo, violations=violations, run={
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inventory": inv.env, "target": req.target, "shape": req.shape,
        "users": plan["timeline"]["peak_users"], "duration_s": req.duration_s,
        "elapsed_s": round(elapsed, 1), "compression": plan["timeline"]["compression"],
        "think_scale": req.think_scale, "workers": req.workers,
        "population": plan["population"], "model": plan["model"],
        "reports": {"csv_prefix": str(req.results_dir / "locust"), "html": str(req.results_dir / "report.html")},
    })
    (req.results_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
