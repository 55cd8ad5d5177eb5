"""Locust users: one simulated user is one open Moodle session. It logs in as
an account of the fixture, goes through a flow with think times between
pages, logs out, and starts again as the next account (or, for one-shot
scenarios — an exam, the smoke run — waits for the end)."""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, ClassVar

import gevent
from locust import FastHttpUser, task
from locust.exception import StopUser
from moodleops.loadtests.flows import Account, Fixture, FlowAborted, MoodleFlows
from moodleops.loadtests.timeline import load_plan

PLAN: dict[str, Any] = load_plan()
FIXTURE = Fixture.of(PLAN["fixture"])


def think_sampler(params: dict[str, Any], scale: float) -> Any:
    """A think-time function drawing from the model's distribution, truncated to min..max."""
    dist, mean = params["distribution"], float(params["mean_s"])
    lo, hi = float(params["min_s"]), float(params["max_s"])

    def draw() -> float:
        if dist == "exponential":
            x = random.expovariate(1.0 / mean)
        elif dist == "uniform":
            half = min(mean - lo, hi - mean)
            x = random.uniform(mean - half, mean + half)
        else:
            x = mean
        return min(hi, max(lo, x)) * scale

    return draw


class MoodleUser(FastHttpUser):
    abstract = True
    host = PLAN["host"]
    role: ClassVar[str] = "student"
    once: ClassVar[bool] = bool(PLAN.get("once"))
    # Fresh connections per user, like separate browsers; keep-alive within a session.
    concurrency = 4
    network_timeout = float(PLAN.get("network_timeout_s", 60))
    connection_timeout = 10.0
    _counters: ClassVar[dict[str, itertools.count]] = {}

    def wait_time(self) -> float:
        return 0.0     # the flows think between pages themselves

    def on_start(self) -> None:
        self._think = think_sampler(PLAN["think"][self.role], float(PLAN.get("think_scale", 1.0)))
        self.done = False

    def think(self) -> None:
        gevent.sleep(self._think())

    def next_account(self, role: str | None = None) -> Account:
        role = role or self.role
        names: list[str] = PLAN["accounts"][role]
        counter = MoodleUser._counters.setdefault(role, itertools.count())
        # Workers interleave so that two processes never take the same account at once.
        worker = getattr(self.environment.runner, "worker_index", 0) or 0
        workers = max(1, int(PLAN.get("workers", 1)))
        i = next(counter) * workers + worker
        return Account(names[i % len(names)], PLAN["password"])

    def fresh_flows(self) -> MoodleFlows:
        # A new person: no cookies from the previous session's account.
        self.client.cookiejar.clear()
        return MoodleFlows(self.client, FIXTURE, self.think)

    def session(self, flows: MoodleFlows) -> None:
        raise NotImplementedError

    @task
    def run_session(self) -> None:
        if self.done:
            gevent.sleep(1)      # one-shot scenario: stay counted, send nothing
            return
        flows = self.fresh_flows()
        try:
            self.session(flows)
        except FlowAborted:
            pass                 # already recorded as a failure; the person gives up this session
        if self.once:
            self.done = True


class StudentUser(MoodleUser):
    """A weekday student session: dashboard, courses, course page, a file, the
    forum; sometimes a reply, a submission or a practice quiz."""

    weight = int(PLAN.get("weights", {}).get("StudentUser", 3))
    role = "student"

    def session(self, flows: MoodleFlows) -> None:
        acts = PLAN["actions"]
        flows.login(self.next_account())
        self.think()
        flows.my_courses()
        self.think()
        flows.course()
        self.think()
        flows.download_resource()
        self.think()
        flows.forum_read()
        if random.random() < acts["forum_post"]:
            self.think()
            flows.forum_post()
        if random.random() < acts["assign_submit"]:
            self.think()
            flows.assign_view()
            self.think()
            flows.assign_submit(b"Rapport de stage (load test)\n" * 20)
        if random.random() < acts["quiz_attempt"]:
            self.think()
            flows.quiz_attempt(self.think)
        self.think()
        flows.dashboard()
        self.think()
        flows.logout()


class SmokeStudentUser(StudentUser):
    """Every student flow once, in order (the test of the flows)."""

    weight = int(PLAN.get("weights", {}).get("SmokeStudentUser", 3))

    def session(self, flows: MoodleFlows) -> None:
        flows.login(self.next_account())
        flows.my_courses()
        flows.course()
        flows.download_resource()
        flows.forum_read()
        flows.forum_post()
        flows.assign_view()
        flows.assign_submit(b"Rapport de stage (smoke)\n" * 20)
        flows.quiz_attempt(self.think)
        flows.dashboard()
        flows.logout()


class NewStudentUser(StudentUser):
    """September: a first login, then finding the course and its documents."""

    weight = int(PLAN.get("weights", {}).get("NewStudentUser", 3))

    def session(self, flows: MoodleFlows) -> None:
        flows.login(self.next_account())
        self.think()
        flows.my_courses()
        self.think()
        flows.course()
        self.think()
        flows.download_resource()
        self.think()
        flows.forum_read()
        self.think()
        flows.logout()


class ExamStudentUser(MoodleUser):
    """An exam taker: starts the quiz when spawned (the shape spreads the starts
    over the start window), answers every question over the exam time, submits
    at the end, then stays until the exam is over."""

    weight = 1
    role = "student"
    once = True

    def session(self, flows: MoodleFlows) -> None:
        exam = PLAN["exam"]
        per_question = float(exam["think_per_question_s"])
        # Takers are at their desks waiting for the start: no reading pauses
        # before the quiz, just the few seconds of finding the button.
        flows.think = lambda: gevent.sleep(random.uniform(0.5, 2.0) * min(1.0, per_question))
        flows.login(self.next_account())
        flows.course()

        def answer_think() -> None:
            gevent.sleep(random.uniform(0.5, 1.5) * per_question)

        def wait_for_end() -> None:
            # Submit within the last submit window of this taker's exam time.
            started = self._started
            end = started + float(exam["taking_s"]) - random.uniform(0, float(exam["submit_window_s"]))
            gevent.sleep(max(0.0, end - time.monotonic()))

        self._started = time.monotonic()
        flows.quiz_attempt(answer_think, before_submit=wait_for_end)


class DeadlineStudentUser(MoodleUser):
    """A submission session before the deadline: course, assignment, upload, save."""

    weight = 1
    role = "student"

    def session(self, flows: MoodleFlows) -> None:
        flows.login(self.next_account())
        self.think()
        flows.course()
        self.think()
        flows.assign_view()
        self.think()
        flows.assign_submit(b"Rapport de stage (deadline)\n" * 200)
        self.think()
        flows.logout()


class TrainerUser(MoodleUser):
    """A trainer session: course page, participants, grading pages, the forum."""

    weight = int(PLAN.get("weights", {}).get("TrainerUser", 1))
    role = "trainer"

    def session(self, flows: MoodleFlows) -> None:
        flows.login(self.next_account())
        self.think()
        flows.my_courses()
        self.think()
        flows.course()
        self.think()
        flows.participants()
        self.think()
        flows.grading()
        self.think()
        flows.forum_read()
        self.think()
        flows.logout()


__all__ = [
    "DeadlineStudentUser",
    "ExamStudentUser",
    "NewStudentUser",
    "SmokeStudentUser",
    "StopUser",
    "StudentUser",
    "TrainerUser",
]
