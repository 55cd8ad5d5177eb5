"""A headless Locust run: the plan (what to play, against what, as whom),
locust started as a subprocess (one process, or a master and K workers),
then the summary and the SLO verdict from its CSV statistics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.loadtests.fixture import LoadtestError
from moodleops.loadtests.model import LoadModel, Population, RoleParams, shape_load
from moodleops.loadtests.server import ServerSampler, role_default
from moodleops.loadtests.sessions import (
    BROWSER_PREFIXES,
    ROLE_OF,
    SHAPE_KINDS,
    SimPlan,
    class_counts,
    expected_mix,
    mean_think,
    mix_gap,
    page_mix,
    session_think_scale,
    think_role,
)
from moodleops.loadtests.ssh import RemoteWorkers, SshOptions, WorkerHost, master_address
from moodleops.loadtests.summary import (
    PageStats,
    build_summary,
    missing_pages,
    read_requests,
    read_stats,
    verdict,
    windows,
)
from moodleops.loadtests.timeline import PLAN_ENV, timeline

from moodleops.inventory import Host, Inventory, is_loopback
from moodleops.site import Site

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
    # Remote workers (over SSH): hosts when not from the inventory's loadgen group (tests).
    ssh_hosts: tuple[Host, ...] = ()
    ssh: SshOptions = field(default_factory=SshOptions)
    master_host: str | None = None        # the address remote workers reach the master at


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


def fixture_size(shape: str, inv: Inventory, model: LoadModel, *, users: int | None, workers: int,
                 questions: int, scale: float = 1.0) -> tuple[int, int]:
    """(students, trainers) a fixture needs for `shape` at its peak (what check_accounts asks)."""
    pop = Population.of(inv, scale)
    if users is None and shape == "smoke":
        users = model.smoke.users
    tl = timeline(shape, model, pop, users=users, duration_s=60.0, questions=questions)
    load = shape_load(shape, model, pop, questions=questions, takers=users if shape == "exam" else None)
    counts = class_counts(_weights(shape, load.student_fraction, load.detail), tl.peak_users)
    procs = max(1, workers)
    need = []
    for role in ("student", "trainer"):
        n = sum(c for k, c in counts.items() if ROLE_OF.get(k, "student") == role)
        need.append(max(1, n + (procs if procs > 1 and n else 0)))
    return need[0], need[1]


def make_plan(req: RunRequest, inv: Inventory, model: LoadModel, fixture: dict[str, Any]) -> dict[str, Any]:
    pop = Population.of(inv, req.scale)
    questions = int(fixture["quiz_questions"])
    users = req.users if req.users is not None else (model.smoke.users if req.shape == "smoke" else None)
    tl = timeline(req.shape, model, pop, users=users, duration_s=req.duration_s, start_hour=req.start_hour,
                  questions=questions)
    # Each account with the index of its course in fixture["courses"].
    students = [[u["username"], int(u.get("course", 0))] for u in fixture["students"]]
    trainers = [[u["username"], int(u.get("course", 0))] for u in fixture["trainers"]]
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
        # Which web node answered, named by the load balancer (per-node figures).
        "served_by_header": role_default("haproxy", "haproxy_served_by_header"),
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


class LocustFailed(LoadtestError):
    """Locust itself failed (not a verdict): its exit status and log say why."""


def worker_hosts(inv: Inventory, remote: list[Host], req: RunRequest) -> RemoteWorkers:
    """The load generators as the playbooks reach them (the toolkit's
    virtualenv there), unless SSH options were given (this checkout there)."""
    if req.ssh.given or req.ssh_hosts:
        return RemoteWorkers.with_options(remote, req.ssh)
    return RemoteWorkers([WorkerHost.of_inventory(inv, h) for h in remote])


def run_locust(plan_path: Path, req: RunRequest, inv: Inventory, *, echo: bool = True,
               on_started: Callable[[list[int]], None] | None = None,
               generators: dict[str, list[str]] | None = None) -> int:
    """Run locust to the end of the plan; returns its exit code (0, or 1 when
    some request failed). Any other status is Locust's own failure: raised.
    `generators` gets the load generators that ran workers ("hosts") and what
    went wrong stopping them ("problems": a worker that had to be killed)."""
    generators = generators if generators is not None else {}
    generators.update(hosts=[], problems=[])
    prefix = str(req.results_dir / "locust")
    env = {**os.environ, PLAN_ENV: str(plan_path)}
    log = open(req.results_dir / "locust.log", "ab")  # noqa: SIM115 - closed below
    out: Any = None if echo else log
    reports = ["--csv", prefix, "--html", str(req.results_dir / "report.html")]
    deadline = float(json.loads(plan_path.read_text(encoding="utf-8"))["timeline"]["duration_s"]) + GRACE_S
    procs: list[subprocess.Popen[bytes]] = []
    remote_workers: RemoteWorkers | None = None
    if req.workers <= 0:
        main = subprocess.Popen(_locust_cmd(reports), env=env, cwd=req.results_dir, stdout=out, stderr=out)
    else:
        loadgen = inv.group("loadgen")
        # A loopback host the inventory reaches over SSH (ansible_connection: ssh) is remote too.
        remote = [h for h in loadgen if not is_loopback(h.address) or h.connection == "ssh"] or list(req.ssh_hosts)
        # Reachable by the workers only: loopback when they are all on this machine,
        # else this machine's address on the route to them (never every interface).
        bind = ("127.0.0.1" if all(is_loopback(h.address) for h in remote)
                else req.master_host or master_address(remote))
        port = _free_port(bind)
        main = subprocess.Popen(_locust_cmd([*reports, "--master", "--expect-workers", str(req.workers),
                                             "--master-bind-host", bind, "--master-bind-port", str(port)]),
                                env=env, cwd=req.results_dir, stdout=out, stderr=out)
        if remote:
            # Workers on the load generators, started over SSH, the plan copied there.
            try:
                remote_workers = worker_hosts(inv, remote, req)
                remote_workers.start(plan_path, req.workers, bind, port)
                generators["hosts"] += remote_workers.host_names
            except LoadtestError:
                main.kill()
                main.wait()
                log.close()
                raise
        else:
            for _ in range(req.workers):
                procs.append(subprocess.Popen(_locust_cmd(["--worker", "--master-host", "127.0.0.1",
                                                           "--master-port", str(port)]), env=env,
                                              cwd=req.results_dir, stdout=subprocess.DEVNULL,
                                              stderr=out))
    if on_started is not None:
        on_started([main.pid] + [p.pid for p in procs])
    try:
        code = main.wait(timeout=deadline + 30)
    except subprocess.TimeoutExpired:
        main.kill()
        main.wait()
        raise LocustFailed(f"locust did not stop {deadline + 30:.0f} s after start; killed") from None
    finally:
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if remote_workers is not None:
            generators["problems"] += remote_workers.stop()
        log.close()
    if code not in (0, 1):
        tail = _tail(req.results_dir / "locust.log")
        raise LocustFailed(f"locust exited with status {code} (its own failure, not a verdict)"
                           + (f": {tail}" if tail else f"; see {req.results_dir / 'locust.log'}"))
    return code


def _free_port(bind: str) -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def _tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run(req: RunRequest, inv: Inventory, model: LoadModel, fixture: dict[str, Any], *,
        echo: bool = True, site: Site | None = None) -> dict[str, Any]:
    """Plan, run, judge. Writes plan.json, locust_*.csv, requests.csv, report.html
    and summary.json into the results directory and returns the summary."""
    if req.users is not None and req.users > MAX_USERS_WITHOUT_FORCE:
        raise LoadtestError(f"--users: {req.users} is not valid (1 to {MAX_USERS_WITHOUT_FORCE})")
    plan = make_plan(req, inv, model, fixture)
    req.results_dir.mkdir(parents=True, exist_ok=True)
    (req.results_dir / "requests.csv").unlink(missing_ok=True)
    plan_path = req.results_dir / "plan.json"
    plan_path.touch(mode=0o600)
    plan_path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
    sampler = ServerSampler.for_inventory(inv, site, req.target) if site is not None else None
    started = time.monotonic()
    generators: dict[str, list[str]] = {}
    try:
        code = run_locust(plan_path, req, inv, echo=echo,
                          on_started=sampler.start if sampler is not None else None,
                          generators=generators)
    finally:
        if sampler is not None:
            sampler.stop()
    elapsed = time.monotonic() - started
    pages, total = locust_results(code, req.results_dir)
    return judge_run(req, inv, model, plan, pages, total, code, elapsed,
                     sampler.report() if sampler is not None else None, generators)


def locust_results(code: int, results_dir: Path) -> tuple[dict[str, PageStats], PageStats]:
    """Locust's statistics, once its exit status is consistent with them:
    1 means "some request failed", so 1 without a failed request, or no
    statistics at all, is Locust's own failure."""
    # The statistics Locust's process wrote as it quit (locustfile.py): the
    # periodic locust_stats.csv lacks the last second's requests, so it is not
    # read even when present.
    stats = results_dir / "locust_stats_final.csv"
    log = results_dir / "locust.log"
    if not stats.is_file():
        tail = _tail(log)
        raise LocustFailed(f"locust exited with status {code} and wrote no statistics"
                           + (f": {tail}" if tail else f"; see {log}"))
    pages, total = read_stats(stats)
    if code == 1 and total.failures == 0:
        raise LocustFailed(f"locust exited with status 1 but counted no failed request; see {log}")
    return pages, total


def judge_run(req: RunRequest, inv: Inventory, model: LoadModel, plan: dict[str, Any],
              pages: dict[str, PageStats], total: PageStats, code: int, elapsed: float,
              server: dict[str, Any] | None, generators: dict[str, list[str]] | None = None) -> dict[str, Any]:
    start, samples = read_requests(req.results_dir / "requests.csv")
    recurring = req.shape not in ("exam", "smoke")
    warmup = model.run.warmup_share * req.duration_s if recurring else 0.0
    win = None
    steady_pages = pages
    peak_pages = None
    if samples:
        win = windows(start if start is not None else samples[0].t, samples, float(plan["timeline"]["duration_s"]),
                      warmup, max(10.0, model.run.peak_window_share * req.duration_s), cut_at_end=recurring)
        steady_pages, peak_pages = win.steady_pages, win.peak_pages
    counts = {n: st.requests for n, st in steady_pages.items()}
    steady_total = win.steady_total if win is not None else total
    # The expected mix for the response times this run actually saw.
    expected = plan_mix(plan, response_s=steady_total.avg_ms / 1000)
    observed = page_mix(counts)
    worst, gap = mix_gap(expected, observed) if observed else ("all", 1.0)
    violations = verdict(steady_pages, total, model.slo, peak=peak_pages)
    missing = missing_pages(expected, steady_pages, model.run.min_requests_per_page)
    summary = build_summary(pages=pages, total=total, slo=model.slo, violations=violations, missing=missing,
                            win=win, run={
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inventory": inv.env, "target": req.target, "shape": req.shape,
        "users": plan["timeline"]["peak_users"], "duration_s": req.duration_s,
        "elapsed_s": round(elapsed, 1), "compression": plan["timeline"]["compression"],
        "think_scale": req.think_scale, "session_think_scale": plan["think_scale"], "workers": req.workers,
        "load_generators": (generators or {}).get("hosts", []),
        "load_generator_problems": (generators or {}).get("problems", []),
        "population": plan["population"], "model": plan["model"],
        "reports": {"csv_prefix": str(req.results_dir / "locust"), "html": str(req.results_dir / "report.html"),
                    "requests_csv": str(req.results_dir / "requests.csv")},
    })
    summary["mix"] = {"expected": expected, "observed": {p: round(v, 5) for p, v in observed.items()},
                      "worst_page": worst, "gap": round(gap, 5), "tolerance": model.run.mix_tolerance,
                      "within": gap <= model.run.mix_tolerance}
    summary["browser"] = {n: st.requests for n, st in steady_pages.items() if n.startswith(BROWSER_PREFIXES)}
    summary["server"] = server
    summary["locust_exit_code"] = code
    (req.results_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
