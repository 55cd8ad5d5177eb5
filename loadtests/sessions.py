"""What each kind of simulated session does, as data: the flows it runs in
order (some only with the model's probability), where the person thinks, and
which page types each flow requests. The Locust users (users.py) play these
scripts; `expected_mix` derives from them the share of each page type a run
of a shape should show, and `simulate` plays a compressed run in simulated
time (no HTTP) to check that compression keeps that mix.

Compression: a calendar shape of natural length L played in D wall seconds
runs at c = L / D. Think times (hence session lengths) are divided by c too,
so whole sessions fit into the run as they fit into the day: the share of
each page type stays the model's. The price is stated, not hidden: each
simulated user then requests c times faster than a person, so a compressed
run's request rate is c x the model's for the same --users.

Pure module: no locust, no gevent (imported by the CLI and the tests).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

THINK = "~"              # the person reads / thinks (role think time)
QTHINK = "~q"            # thinking over one quiz question
SUBMIT_WAIT = "@submit"  # exam: wait for the end of the exam time before submitting

AJAX_TIMELINE = "ajax:core_calendar_get_action_events_by_timesort"
AJAX_COURSES = "ajax:core_course_get_enrolled_courses_by_timeline_classification"

# Page types each flow of flows.MoodleFlows requests, with its own pauses.
# The stack test checks a real run against the mix these imply.
FLOW_PAGES: dict[str, tuple[str, ...]] = {
    "login": ("login:form", THINK, "login:post", AJAX_TIMELINE),
    "dashboard": ("dashboard", AJAX_TIMELINE),
    "my_courses": ("mycourses", AJAX_COURSES),
    "logout": ("logout",),
    "course": ("course",),
    "download_resource": ("resource:view", "resource"),
    "forum_read": ("forum:view", THINK, "forum:discuss"),
    "forum_post": ("forum:replyform", THINK, "forum:post"),
    "assign_view": ("assign:view",),
    "assign_submit": ("assign:editsubmission", THINK, "assign:upload", "assign:save", "assign:view"),
    "grading": ("grading", THINK, "quiz:report"),
    "participants": ("participants",),
}

# Requests a browser makes besides the pages (theme CSS/JS with its cache, the
# quiz autosave, the session keep-alive): conditional on cache and timing, so
# reported but outside the page mix.
BROWSER_PREFIXES = ("static:", "quiz:autosave", "ajax:core_session_touch")


def quiz_pages(questions: int) -> tuple[str, ...]:
    pages: list[str] = ["quiz:view", THINK, "quiz:start"]
    for _ in range(questions):
        pages += ["quiz:page", QTHINK, "quiz:answer"]
    return (*pages, "quiz:summary", SUBMIT_WAIT, "quiz:submit", "quiz:review")


def flow_pages(flow: str, questions: int) -> tuple[str, ...]:
    return quiz_pages(questions) if flow == "quiz_attempt" else FLOW_PAGES[flow]


@dataclass(frozen=True)
class Step:
    flows: tuple[str, ...]
    when: str | None = None        # student_actions key: run with that probability
    think: bool = True             # think before each flow of the step


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...]
    once: bool = False             # one session per simulated user (exam, smoke)
    internal_think: bool = True    # the flows' own pauses (False: smoke, exam lead-in)


def _s(*flows: str, when: str | None = None, think: bool = True) -> Step:
    return Step(flows, when, think)


SCRIPTS: dict[str, Script] = {
    "StudentUser": Script((
        _s("login", think=False), _s("my_courses"), _s("course"), _s("download_resource"), _s("forum_read"),
        _s("forum_post", when="forum_post"), _s("assign_view", "assign_submit", when="assign_submit"),
        _s("quiz_attempt", when="quiz_attempt"), _s("dashboard"), _s("logout"))),
    "SmokeStudentUser": Script((
        _s("login", "my_courses", "course", "download_resource", "forum_read", "forum_post", "assign_view",
           "assign_submit", "quiz_attempt", "dashboard", "logout", think=False),), once=True, internal_think=False),
    "NewStudentUser": Script((
        _s("login", think=False), _s("my_courses"), _s("course"), _s("download_resource"), _s("forum_read"),
        _s("logout"))),
    "ExamStudentUser": Script((_s("login", "course", "quiz_attempt", think=False),), once=True,
                              internal_think=False),
    "DeadlineStudentUser": Script((
        _s("login", think=False), _s("course"), _s("assign_view"), _s("assign_submit"), _s("logout"))),
    "TrainerUser": Script((
        _s("login", think=False), _s("my_courses"), _s("course"), _s("participants"), _s("grading"),
        _s("forum_read"), _s("logout"))),
}

ROLE_OF = {"TrainerUser": "trainer"}


def think_role(kind: str, shape: str) -> str:
    """Which think-time parameters of the plan a session kind uses."""
    if kind == "NewStudentUser" and shape == "september":
        return "newcomer"
    return ROLE_OF.get(kind, "student")

# The session kinds (Locust user classes) each calendar shape plays.
SHAPE_KINDS: dict[str, tuple[str, ...]] = {
    "weekday": ("StudentUser", "TrainerUser"),
    "september": ("NewStudentUser", "StudentUser", "TrainerUser"),
    "exam": ("ExamStudentUser",),
    "deadline": ("DeadlineStudentUser",),
    "smoke": ("SmokeStudentUser", "TrainerUser"),
}


def session_flows(kind: str, actions: dict[str, float], rng: random.Random) -> Iterator[tuple[bool, str]]:
    """(think before?, flow name) of one session of `kind`, with the optional
    steps drawn as the model's probabilities say."""
    for step in SCRIPTS[kind].steps:
        if step.when is not None and rng.random() >= actions[step.when]:
            continue
        for flow in step.flows:
            yield step.think, flow


# -- think times ----------------------------------------------------------------

def think_sampler(params: dict[str, float | str], scale: float, rng: random.Random) -> Callable[[], float]:
    """Draws from the model's think-time distribution, truncated to min..max, times `scale`."""
    dist, mean = str(params["distribution"]), float(params["mean_s"])
    lo, hi = float(params["min_s"]), float(params["max_s"])

    def draw() -> float:
        if dist == "exponential":
            x = rng.expovariate(1.0 / mean)
        elif dist == "uniform":
            half = min(mean - lo, hi - mean)
            x = rng.uniform(mean - half, mean + half)
        else:
            x = mean
        return min(hi, max(lo, x)) * scale

    return draw


def mean_think(params: dict[str, float | str]) -> float:
    """Expected value of the truncated draw (scale 1)."""
    dist, m = str(params["distribution"]), float(params["mean_s"])
    lo, hi = float(params["min_s"]), float(params["max_s"])
    if dist == "exponential":
        # E[clip(X, lo, hi)] for X ~ Exp(1/m) = lo + m (e^(-lo/m) - e^(-hi/m)).
        return lo + m * (math.exp(-lo / m) - math.exp(-hi / m))
    return min(hi, max(lo, m))


def session_think_scale(shape: str, compression: float, think_scale: float) -> float:
    """Wall seconds per model second of thinking: the calendar's compression,
    times the operator's --think-scale. The exam paces its answers itself;
    smoke is not a calendar."""
    if shape in ("exam", "smoke"):
        return think_scale
    return think_scale / max(1.0, compression)


def paced_question_s(wanted_s: float, now: float, answer_by: float, questions_left: int) -> float:
    """Time a taker spends on the next question: what they want, but no more
    than their share of what is left before `answer_by` (the exam's time
    limit less the submit window). A slow start (a login queued behind the
    synchronised ones) is made up on the questions, as a person watching the
    quiz timer does, instead of running past the end of the exam."""
    return max(0.0, min(wanted_s, (answer_by - now) / max(1, questions_left)))


# -- the mix a run should show ---------------------------------------------------

def session_expectation(kind: str, actions: dict[str, float], questions: int) -> tuple[Counter[str], float]:
    """Expected requests per page type in one session, and expected think count."""
    pages: Counter[str] = Counter()
    thinks = 0.0
    script = SCRIPTS[kind]
    for step in script.steps:
        p = 1.0 if step.when is None else actions[step.when]
        for flow in step.flows:
            thinks += p * step.think
            for item in flow_pages(flow, questions):
                if item in (THINK, QTHINK):
                    thinks += p * script.internal_think
                elif item != SUBMIT_WAIT:
                    pages[item] += p  # type: ignore[assignment]
    return pages, thinks


def class_counts(weights: dict[str, int], users: int) -> dict[str, int]:
    """Users per class for `users` in all: largest remainder, as Locust spreads weights."""
    total = sum(weights.values())
    raw = {k: users * w / total for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[:users - sum(out.values())]:
        out[k] += 1
    return out


def expected_mix(kinds: dict[str, float], actions: dict[str, float], questions: int,
                 think_s: dict[str, float], response_s: float) -> dict[str, float]:
    """Share of each page type (browser requests excluded). `kinds`: users per
    session kind (or weights); `think_s`: mean wall think time per kind; a user
    of a recurring kind starts sessions at 1 / (expected session length)."""
    rate: Counter[str] = Counter()
    for kind, users in kinds.items():
        if users <= 0:
            continue
        pages, thinks = session_expectation(kind, actions, questions)
        length = thinks * think_s[kind] + sum(pages.values()) * response_s
        per_user = 1.0 if SCRIPTS[kind].once else 1.0 / max(length, 1e-9)
        for page, n in pages.items():
            rate[page] += users * per_user * n  # type: ignore[assignment]
    total = sum(rate.values())
    return {p: n / total for p, n in sorted(rate.items())} if total else {}


def page_mix(counts: dict[str, int]) -> dict[str, float]:
    """Observed shares, browser requests left out (as in expected_mix)."""
    pages = {p: n for p, n in counts.items() if not p.startswith(BROWSER_PREFIXES)}
    total = sum(pages.values())
    return {p: n / total for p, n in sorted(pages.items())} if total else {}


def mix_gap(expected: dict[str, float], observed: dict[str, float]) -> tuple[str, float]:
    """The page type furthest from its expected share, and by how much (absolute)."""
    names = set(expected) | set(observed)
    worst = max(names, key=lambda p: abs(expected.get(p, 0.0) - observed.get(p, 0.0)))
    return worst, abs(expected.get(worst, 0.0) - observed.get(worst, 0.0))


# -- a compressed run in simulated time -------------------------------------------

@dataclass(frozen=True)
class SimPlan:
    points: tuple[tuple[float, int], ...]   # (wall second, users) as the Timeline plays them
    duration_s: float
    spawn_rate: float
    weights: dict[str, int]
    think: dict[str, dict[str, float | str]]  # per kind: distribution, mean_s, min_s, max_s
    think_scale: float                     # wall seconds per model think second
    actions: dict[str, float]
    questions: int
    exam_question_s: float = 1.0
    exam_taking_s: float = 0.0
    exam_submit_window_s: float = 0.0


def simulate(plan: SimPlan, *, response_s: float = 0.05, seed: int = 1) -> list[tuple[float, str]]:
    """Every request of the run as (wall second, page type), users added at the
    spawn rate and stopped (mid-session) when the timeline goes down, as Locust
    does. Deterministic for a seed."""
    rng = random.Random(seed)
    draws = {kind: think_sampler(p, plan.think_scale, rng) for kind, p in plan.think.items()}
    out: list[tuple[float, str]] = []
    heap: list[tuple[float, int, int]] = []           # (time, seq, user id)
    alive: dict[int, tuple[str, Iterator[float | str], float]] = {}
    seq = 0
    next_id = 0
    by_kind: dict[str, list[int]] = {k: [] for k in plan.weights}

    def session(kind: str, started: float) -> Iterator[float | str]:
        """Yields pages (str) and pauses (float seconds)."""
        script = SCRIPTS[kind]
        draw = draws[kind]
        answer_by = started + plan.exam_taking_s - plan.exam_submit_window_s
        questions_left = plan.questions
        for think_first, flow in session_flows(kind, plan.actions, rng):
            if think_first:
                yield draw()
            for item in flow_pages(flow, plan.questions):
                if item == THINK:
                    if script.internal_think:
                        yield draw()
                elif item == QTHINK:
                    if kind == "ExamStudentUser":
                        wanted = rng.uniform(0.5, 1.5) * plan.exam_question_s
                        yield paced_question_s(wanted, now[0], answer_by, questions_left)
                        questions_left -= 1
                    else:
                        yield draw()
                elif item == SUBMIT_WAIT:
                    if kind == "ExamStudentUser":
                        end = started + plan.exam_taking_s - rng.uniform(0, plan.exam_submit_window_s)
                        yield max(0.0, end - now[0])
                else:
                    yield item

    now = [0.0]

    def schedule(uid: int, t: float) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, uid))

    def start_user(t: float) -> None:
        nonlocal next_id
        counts = {k: len(v) for k, v in by_kind.items()}
        target = class_counts(plan.weights, sum(counts.values()) + 1)
        kind = max(target, key=lambda k: target[k] - counts[k])
        uid, next_id = next_id, next_id + 1
        by_kind[kind].append(uid)
        alive[uid] = (kind, session(kind, t), t)
        schedule(uid, t)

    def stop_user() -> None:
        counts = {k: len(v) for k, v in by_kind.items()}
        target = class_counts(plan.weights, sum(counts.values()) - 1)
        kind = max(counts, key=lambda k: counts[k] - target.get(k, 0))
        uid = by_kind[kind].pop(rng.randrange(len(by_kind[kind])))
        del alive[uid]

    # Timeline changes as events too: (time, -1, users wanted).
    changes = list(plan.points)
    ci = 0
    pending_spawn = 0
    spawn_step = 1.0 / max(plan.spawn_rate, 1e-9)
    next_spawn = 0.0
    while True:
        t_change = changes[ci][0] if ci < len(changes) else math.inf
        t_spawn = next_spawn if pending_spawn > 0 else math.inf
        t_user = heap[0][0] if heap else math.inf
        t = min(t_change, t_spawn, t_user)
        if t >= plan.duration_s:
            break
        now[0] = t
        if t == t_change:
            wanted = changes[ci][1]
            ci += 1
            have = len(alive) + pending_spawn
            if wanted > have:
                pending_spawn += wanted - have
                next_spawn = max(next_spawn, t)
            else:
                for _ in range(have - wanted):
                    if pending_spawn:
                        pending_spawn -= 1
                    else:
                        stop_user()
            continue
        if t == t_spawn:
            start_user(t)
            pending_spawn -= 1
            next_spawn = t + spawn_step
            continue
        _, _, uid = heapq.heappop(heap)
        if uid not in alive:
            continue
        kind, gen, _started = alive[uid]
        item = next(gen, None)
        if item is None:
            if SCRIPTS[kind].once:
                continue                      # stays counted, sends nothing
            alive[uid] = (kind, session(kind, t), t)
            schedule(uid, t)
        elif isinstance(item, str):
            out.append((t, item))
            schedule(uid, t + response_s)
        else:
            schedule(uid, t + item)
    return out
