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
from moodleops.loadtests.sessions import (
    ROLE_OF,
    SHAPE_KINDS,
    SimPlan,
    class_counts,
    expected_mix,
    mean_think,
    session_think_scale,
    think_role,
)
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
    """Locust class weights (percent) of the shape's session kinds, so the user
    mix follows the model at the peak."""
    if shape == "smoke":
        return {"SmokeStudentUser": 3, "TrainerUser": 1}
    if shape in ("exam", "deadline"):
        return {SHAPE_KINDS[shape][0]: 1}
    w = {"StudentUser": max(1, round(100 * student_fraction)),
         "TrainerUser": max(1, round(100 * (1 - student_fraction)))}
    if shape == "september":
        total = detail["storm_concurrent"] + detail["background_concurrent"]
        storm = detail["storm_concurrent"] / total if total else 1.0
        trainers = 1 - student_fraction
        w = {"NewStudentUser": max(1, round(100 * storm)),
             "StudentUser": max(1, round(100 * (1 - storm - trainers))), "TrainerUser": max(1, round(100 * trainers))}
    return w


def check_accounts(shape: str, peak_users: int, weights: dict[str, int], workers: int,
                   students: int, trainers: int) -> None:
    """Refuse a fixture with fewer accounts than the sessions open at once: two
    sessions in one account would share a quiz attempt and a submission.
    Accounts are split between the Locust processes, so each process needs
    its share of the peak."""
    counts = class_counts(weights, peak_users)
    need = {"student": sum(n for k, n in counts.items() if ROLE_OF.get(k, "student") == "student"),
            "trainer": sum(n for k, n in counts.items() if ROLE_OF.get(k) == "trainer")}
    procs = max(1, workers)
    for role, have in (("student", students), ("trainer", trainers)):
        # Locust spreads users over workers evenly; one spare per process for its rounding.
        required = need[role] + (procs if procs > 1 and need[role] else 0)
        if have < required:
            raise LoadtestError(
                f"fixture: {have} {role} account(s) for the {shape} shape's {need[role]} concurrent {role} "
                f"session(s) at its peak of {peak_users} users{f' over {procs} workers' if procs > 1 else ''}; "
                f"prepare a fixture with --{role}s {required} or more, or lower --users")


def make_plan(req: RunRequest, inv: Inventory, model: LoadModel, fixture: dict[str, Any]) -> dict[str, Any]:
    pop = Population.of(inv, req.scale)
    questions = int(fixture["quiz_questions"])
    users = req.users if req.users is not None else (model.smoke.users if req.shape == "smoke" else None)
    tl = timeline(req.shape, model, pop, users=users, duration_s=req.duration_s, start_hour=req.start_hour,
                  questions=questions)
    students = [u["username"] for u in fixture["students"]]
    trainers = [u["username"] for u in fixture["trainers"]]
    load = shape_load(req.shape, model, pop, questions=questions, takers=users if req.shape == "exam" else None)
    weights = _weights(req.shape, load.student_fraction, load.detail)
    check_accounts(req.shape, tl.peak_users, weights, req.workers, len(students), len(trainers))
    exam = model.exam
    taking_s = (exam.duration_s - exam.start_window_s) / tl.compression if req.shape == "exam" else 0.0
    answering_s = (exam.duration_s - exam.start_window_s - exam.submit_window_s) / tl.compression
    actions = model.actions
    think = {"student": _think(model.student), "trainer": _think(model.trainer)}
    if req.shape == "september":
        # Newcomers' sessions are the September block's (shorter, fewer pages).
        sep = model.september
        think["newcomer"] = {**think["student"], "mean_s": sep.session_s / sep.pages_per_session}
    act = {"forum_post": actions.forum_post, "assign_submit": actions.assign_submit,
           "quiz_attempt": actions.quiz_attempt}
    scale = session_think_scale(req.shape, tl.compression, req.think_scale)
    plan: dict[str, Any] = {
        "host": req.target,
        "shape": req.shape,
        "timeline": tl.to_json(),
        "fixture": fixture,
        "password": fixture["password"],
        "accounts": {"student": students, "trainer": trainers},
        "think": think,
        "think_scale": scale,
        "actions": act,
        "weights": weights,
        "once": req.shape in ("smoke", "exam"),
        "workers": max(1, req.workers),
        "exam": {"taking_s": taking_s, "submit_window_s": exam.submit_window_s / tl.compression,
                 "think_per_question_s": max(0.2, answering_s / questions)},
        "browser": {"cold_cache_share": model.browser.cold_cache_share,
                    # Autosave and keep-alive periods are model time, compressed like thinking.
                    "time_scale": scale if req.shape != "exam" else 1 / tl.compression},
        "files": {"submission_quantiles": [list(q) for q in model.submission_sizes.quantiles]},
        "model": {"peak_concurrent": round(load.peak_concurrent, 2),
                  "peak_arrivals_per_s": round(load.peak_arrivals_per_s, 4),
                  "peak_pages_per_s": round(load.peak_pages_per_s, 4),
                  **{k: round(v, 4) for k, v in load.detail.items()}},
        "population": {"students": pop.students, "trainers": pop.trainers, "scale": req.scale},
    }
    plan["expected_mix"] = plan_mix(plan, response_s=0.1)
    return plan


def plan_mix(plan: dict[str, Any], response_s: float) -> dict[str, float]:
    """The page mix the plan should show, for a mean response time."""
    kinds = class_counts(plan["weights"], int(plan["timeline"]["peak_users"]))
    think_s = {k: mean_think(plan["think"][think_role(k, plan["shape"])]) * float(plan["think_scale"])
               for k in kinds}
    return {p: round(v, 5) for p, v in expected_mix(
        kinds, plan["actions"], int(plan["fixture"]["quiz_questions"]), think_s, response_s).items()}


def sim_plan(plan: dict[str, Any]) -> SimPlan:
    """The plan as the simulation plays it (tests: does compression keep the mix)."""
    tl = plan["timeline"]
    return SimPlan(points=tuple((float(t), int(u)) for t, u in tl["points"]), duration_s=float(tl["duration_s"]),
                   spawn_rate=float(tl["spawn_rate"]), weights=plan["weights"],
                   think={k: think_role_params(plan, k) for k in plan["weights"]},
                   think_scale=float(plan["think_scale"]), actions=plan["actions"],
                   questions=int(plan["fixture"]["quiz_questions"]),
                   exam_question_s=float(plan["exam"]["think_per_question_s"]),
                   exam_taking_s=float(plan["exam"]["taking_s"]),
                   exam_submit_window_s=float(plan["exam"]["submit_window_s"]))


def think_role_params(plan: dict[str, Any], kind: str) -> dict[str, Any]:
    params: dict[str, Any] = plan["think"][think_role(kind, plan["shape"])]
    return params


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
