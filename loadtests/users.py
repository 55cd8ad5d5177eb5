"""Locust users: one simulated user is one open Moodle session. It logs in as
an account of the fixture, goes through a flow with think times between
pages, logs out, and starts again as the next account (or, for one-shot
scenarios — an exam, the smoke run — waits for the end)."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
from locust import FastHttpUser, task
from locust.exception import StopUser
from moodleops.loadtests.flows import Account, Browser, Fixture, FlowAborted, MoodleFlows
from moodleops.loadtests.model import FileSizes
from moodleops.loadtests.sessions import (
    ROLE_OF,
    SCRIPTS,
    paced_question_s,
    session_flows,
    think_role,
    think_sampler,
)
from moodleops.loadtests.timeline import load_plan

PLAN: dict[str, Any] = load_plan()
# One Fixture per course of the fixture (older records: the one course at the top level).
COURSES = [Fixture.of(c) for c in PLAN["fixture"].get("courses") or [PLAN["fixture"]]]
SIZES = FileSizes(tuple((float(q), float(b)) for q, b in PLAN["files"]["submission_quantiles"]))


class AccountPool:
    """The accounts of one role this process may use, each in at most one open
    session at a time (two sessions in one account would share a quiz
    attempt). Processes take disjoint slices (worker k: every K-th account)."""

    def __init__(self, accounts: list[tuple[str, int]], worker: int, workers: int) -> None:
        self.free = collections.deque((str(a), int(c)) for a, c in accounts[worker::workers])

    def take(self) -> tuple[str, int]:
        if not self.free:
            # The plan refuses fixtures smaller than the peak (runner.check_accounts).
            raise StopUser("no free account left in this process's share of the fixture")
        return self.free.popleft()

    def give_back(self, account: tuple[str, int]) -> None:
        self.free.append(account)


class MoodleUser(FastHttpUser):
    abstract = True
    host = PLAN["host"]
    kind: ClassVar[str] = "StudentUser"
    # Fresh connections per user, like separate browsers; keep-alive within a session.
    concurrency = 4
    network_timeout = float(PLAN.get("network_timeout_s", 60))
    connection_timeout = 10.0
    _pools: ClassVar[dict[str, AccountPool]] = {}

    def wait_time(self) -> float:
        return 0.0     # the flows think between pages themselves

    @property
    def role(self) -> str:
        return ROLE_OF.get(self.kind, "student")

    def on_start(self) -> None:
        params = PLAN["think"][think_role(self.kind, PLAN["shape"])]
        self._think = think_sampler(params, float(PLAN.get("think_scale", 1.0)), random.Random())
        self.done = False
        self.account: tuple[str, int] | None = None

    def on_stop(self) -> None:
        self._release()

    def think(self) -> None:
        gevent.sleep(self._think())

    def _pool(self) -> AccountPool:
        role = self.role
        if role not in MoodleUser._pools:
            worker = getattr(self.environment.runner, "worker_index", 0) or 0
            MoodleUser._pools[role] = AccountPool(PLAN["accounts"][role], worker,
                                                  max(1, int(PLAN.get("workers", 1))))
        return MoodleUser._pools[role]

    def next_account(self) -> tuple[str, int]:
        self._release()
        self.account = self._pool().take()
        return self.account

    def _release(self) -> None:
        if getattr(self, "account", None):
            self._pool().give_back(self.account)  # type: ignore[arg-type]
            self.account = None

    def fresh_flows(self, course: int) -> MoodleFlows:
        # A new person: no cookies from the previous session's account, and a
        # browser cache that is cold with the model's probability.
        self.client.cookiejar.clear()
        browser = Browser(cold=random.random() < float(PLAN["browser"]["cold_cache_share"]),
                          time_scale=float(PLAN["browser"]["time_scale"]))
        return MoodleFlows(self.client, COURSES[course % len(COURSES)], self.think, browser)

    def upload(self) -> bytes:
        size = SIZES.draw(random.random())
        return (b"Rapport de stage (load test)\n" * (size // 29 + 1))[:size]

    def flow_calls(self, flows: MoodleFlows) -> dict[str, Callable[[], Any]]:
        return {"assign_submit": lambda: flows.assign_submit(self.upload()),
                "quiz_attempt": lambda: flows.quiz_attempt(self._think)}

    def session(self, flows: MoodleFlows, account: Account) -> None:
        special = self.flow_calls(flows)
        for think_first, flow in session_flows(self.kind, PLAN["actions"], random.Random()):
            if think_first:
                self.think()
            if flow == "login":
                flows.login(account)
            else:
                special.get(flow, getattr(flows, flow))()

    @task
    def run_session(self) -> None:
        if self.done:
            gevent.sleep(1)      # one-shot scenario: stay counted, send nothing
            return
        name, course = self.next_account()
        flows = self.fresh_flows(course)
        try:
            self.session(flows, Account(name, PLAN["password"]))
        except FlowAborted:
            pass                 # already recorded as a failure; the person gives up this session
        finally:
            self._release()
        if SCRIPTS[self.kind].once:
            self.done = True


class StudentUser(MoodleUser):
    """A weekday student session: dashboard, courses, course page, a file, the
    forum; sometimes a reply, a submission or a practice quiz (sessions.SCRIPTS)."""

    weight = int(PLAN.get("weights", {}).get("StudentUser", 3))
    kind = "StudentUser"


class SmokeStudentUser(MoodleUser):
    """Every student flow once, in order (the test of the flows)."""

    weight = int(PLAN.get("weights", {}).get("SmokeStudentUser", 3))
    kind = "SmokeStudentUser"


class NewStudentUser(MoodleUser):
    """September: a first login, then finding the course and its documents."""

    weight = int(PLAN.get("weights", {}).get("NewStudentUser", 3))
    kind = "NewStudentUser"


class ExamStudentUser(MoodleUser):
    """An exam taker: starts the quiz when spawned (the shape spreads the starts
    over the start window), answers every question over the exam time, submits
    at the end, then stays until the exam is over."""

    weight = 1
    kind = "ExamStudentUser"

    def fresh_flows(self, course: int) -> MoodleFlows:
        flows = super().fresh_flows(course)
        per_question = float(PLAN["exam"]["think_per_question_s"])
        # Takers are at their desks waiting for the start: no reading pauses
        # before the quiz, just the few seconds of finding the button.
        flows.think = lambda: gevent.sleep(random.uniform(0.5, 2.0) * min(1.0, per_question))
        return flows

    def flow_calls(self, flows: MoodleFlows) -> dict[str, Callable[[], Any]]:
        exam = PLAN["exam"]
        per_question = float(exam["think_per_question_s"])
        started = time.monotonic()
        taking_s, submit_window_s = float(exam["taking_s"]), float(exam["submit_window_s"])
        left = [flows.fx.quiz_questions]

        def question_s() -> float:
            # Within this taker's time limit, however late the lead-in made them.
            s = paced_question_s(random.uniform(0.5, 1.5) * per_question, time.monotonic(),
                                 started + taking_s - submit_window_s, left[0])
            left[0] -= 1
            return s

        def wait_for_end() -> None:
            # Submit within the last submit window of this taker's exam time.
            end = started + taking_s - random.uniform(0, submit_window_s)
            gevent.sleep(max(0.0, end - time.monotonic()))

        return {"quiz_attempt": lambda: flows.quiz_attempt(question_s, before_submit=wait_for_end)}


class DeadlineStudentUser(MoodleUser):
    """A submission session before the deadline: course, assignment, upload, save."""

    weight = 1
    kind = "DeadlineStudentUser"


class TrainerUser(MoodleUser):
    """A trainer session: course page, participants, grading pages, the forum."""

    weight = int(PLAN.get("weights", {}).get("TrainerUser", 1))
    kind = "TrainerUser"


__all__ = [
    "DeadlineStudentUser",
    "ExamStudentUser",
    "NewStudentUser",
    "SmokeStudentUser",
    "StopUser",
    "StudentUser",
    "TrainerUser",
]
