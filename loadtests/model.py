"""The load model: inventory/loadmodel.yml read and validated, and the
arithmetic that turns accounts into concurrent sessions and arrival rates.

Little's law does the work: concurrent sessions = session arrival rate x
session length. A Locust user is one concurrent session (it logs in, browses,
logs out and starts again as another account), so these figures are directly
the user counts the load shapes play.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from moodleops.inventory import Inventory
from moodleops.inventory._reader import Node, display_path, load_yaml

FILE_NAME = "loadmodel.yml"
HOUR_S = 3600.0
THINK_DISTRIBUTIONS = ("exponential", "uniform", "constant")
SHAPES = ("weekday", "september", "exam", "deadline", "smoke")


@dataclass(frozen=True)
class ThinkTime:
    distribution: str             # exponential | uniform | constant
    min_s: float
    max_s: float


@dataclass(frozen=True)
class RoleParams:
    active_share_peak_hour: float
    sessions_per_active_user_hour: float
    session_s: float
    pages_per_session: int
    think: ThinkTime

    @property
    def mean_think_s(self) -> float:
        # Derived, not a parameter: three free numbers could contradict each other.
        return self.session_s / self.pages_per_session


@dataclass(frozen=True)
class StudentActions:
    forum_post: float
    assign_submit: float
    quiz_attempt: float


@dataclass(frozen=True)
class WeekdayParams:
    hourly_profile: tuple[float, ...]


@dataclass(frozen=True)
class SeptemberParams:
    new_student_share: float
    window_s: float
    peak_s: float
    session_s: float
    pages_per_session: int
    background_share: float


@dataclass(frozen=True)
class ExamParams:
    cohort_share: float
    start_window_s: float
    duration_s: float
    submit_window_s: float


@dataclass(frozen=True)
class DeadlineParams:
    cohort_share: float
    last_hour_share: float
    window_s: float
    session_s: float


@dataclass(frozen=True)
class SmokeParams:
    users: int
    duration_s: float


@dataclass(frozen=True)
class Slo:
    error_rate_max: float
    min_requests_for_p95: int
    p95_ms: dict[str, float]      # page type -> limit; 'default' for the others

    def p95_limit(self, page: str) -> float:
        # "forum:post" falls back to "forum", then to "default".
        if page in self.p95_ms:
            return self.p95_ms[page]
        family = page.split(":", 1)[0]
        return self.p95_ms.get(family, self.p95_ms["default"])


@dataclass(frozen=True)
class RunParams:
    warmup_share: float
    peak_window_share: float
    min_requests_per_page: int
    mix_tolerance: float


@dataclass(frozen=True)
class BrowserParams:
    cold_cache_share: float


@dataclass(frozen=True)
class FileSizes:
    """Quantiles (share -> bytes) of uploaded files; `draw` interpolates log-linearly."""

    quantiles: tuple[tuple[float, float], ...]

    def draw(self, u: float) -> int:
        q = self.quantiles
        if u <= q[0][0]:
            return int(q[0][1])
        for (p0, b0), (p1, b1) in itertools.pairwise(q):
            if u <= p1:
                f = (u - p0) / (p1 - p0)
                return int(math.exp(math.log(b0) + f * (math.log(b1) - math.log(b0))))
        return int(q[-1][1])


@dataclass(frozen=True)
class LoadModel:
    path: Path
    student: RoleParams
    trainer: RoleParams
    actions: StudentActions
    weekday: WeekdayParams
    september: SeptemberParams
    exam: ExamParams
    deadline: DeadlineParams
    smoke: SmokeParams
    slo: Slo
    run: RunParams
    browser: BrowserParams
    submission_sizes: FileSizes


# -- reading -----------------------------------------------------------------

def _number(node: Node, minimum: float = 0.0, maximum: float | None = None, *, strict_min: bool = False) -> float:
    v = node.value
    ok = type(v) in (int, float) and (v > minimum if strict_min else v >= minimum) \
        and (maximum is None or v <= maximum)
    if not ok:
        rel = ">" if strict_min else ">="
        node.fail(f"a number {rel} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else ""))
    return float(v)


def _share(node: Node) -> float:
    return _number(node, 0.0, 1.0)


def _sourced(node: Node, keys: tuple[str, ...]) -> dict[str, object]:
    """Every block must say where its numbers come from."""
    mapping = node.mapping(keys + ("source",))
    src = node.get("source")
    if not isinstance(src.value, str) or not src.value.strip():
        src.fail("required: a `source:` text naming the source or the stated assumption")
    return mapping


def _role(node: Node) -> RoleParams:
    _sourced(node, ("active_share_peak_hour", "sessions_per_active_user_hour", "session_minutes",
                    "pages_per_session", "think_time"))
    think = node.get("think_time")
    think.mapping(("distribution", "min_s", "max_s"))
    dist = think.get("distribution")
    if dist.value not in THINK_DISTRIBUTIONS:
        dist.fail("one of: " + ", ".join(THINK_DISTRIBUTIONS))
    tmin = _number(think.get("min_s"))
    tmax = _number(think.get("max_s"), strict_min=True)
    if tmax < tmin:
        think.get("max_s").fail(f"a number >= min_s ({tmin:g})")
    role = RoleParams(
        active_share_peak_hour=_share(node.get("active_share_peak_hour")),
        sessions_per_active_user_hour=_number(node.get("sessions_per_active_user_hour"), 0, strict_min=True),
        session_s=_number(node.get("session_minutes"), 0, strict_min=True) * 60,
        pages_per_session=node.get("pages_per_session").integer(minimum=1),
        think=ThinkTime(str(dist.value), tmin, tmax),
    )
    if not tmin <= role.mean_think_s <= tmax:
        node.get("session_minutes").fail(
            f"a session length whose mean think time (session / pages = {role.mean_think_s:g} s) "
            f"lies within think_time min_s..max_s ({tmin:g}..{tmax:g})")
    return role


def load_model(inv: Inventory, path: Path | None = None) -> LoadModel:
    """Read and validate inventory/loadmodel.yml (or `path`)."""
    path = path or inv.root / FILE_NAME
    doc = Node(display_path(path), "", load_yaml(path))
    doc.mapping(("roles", "student_actions", "shapes", "slo", "run", "browser", "files"))
    roles = doc.get("roles")
    roles.mapping(("student", "trainer"))
    acts = doc.get("student_actions")
    _sourced(acts, ("forum_post_probability", "assign_submit_probability", "quiz_attempt_probability"))
    shapes = doc.get("shapes")
    shapes.mapping(SHAPES)

    wd = shapes.get("weekday")
    _sourced(wd, ("hourly_profile",))
    profile = tuple(_share(n) for n in wd.get("hourly_profile").seq(min_len=24))
    if len(profile) != 24 or max(profile) != 1.0:
        wd.get("hourly_profile").fail("24 shares of the peak hour, the largest exactly 1.0")

    sep = shapes.get("september")
    _sourced(sep, ("new_student_share", "window_minutes", "peak_minute", "session_minutes",
                   "pages_per_session", "background_share"))
    window = _number(sep.get("window_minutes"), 0, strict_min=True) * 60
    peak = _number(sep.get("peak_minute"), 0, window / 60) * 60

    ex = shapes.get("exam")
    _sourced(ex, ("cohort_share_of_largest_school", "start_window_s", "duration_minutes", "submit_window_s"))
    duration = _number(ex.get("duration_minutes"), 0, strict_min=True) * 60
    start_w = _number(ex.get("start_window_s"), 0, strict_min=True)
    submit_w = _number(ex.get("submit_window_s"), 0, strict_min=True)
    if start_w + submit_w >= duration:
        ex.get("duration_minutes").fail("longer than start_window_s + submit_window_s")

    dl = shapes.get("deadline")
    _sourced(dl, ("cohort_share_of_largest_school", "last_hour_share", "window_minutes", "session_minutes"))

    sm = shapes.get("smoke")
    _sourced(sm, ("users", "duration_s"))

    slo = doc.get("slo")
    _sourced(slo, ("error_rate_max", "min_requests_for_p95", "p95_ms"))
    p95 = {k: _number(n, 0, strict_min=True) for k, n in slo.get("p95_ms").items()}
    if "default" not in p95:
        slo.get("p95_ms").fail("a mapping of page type -> milliseconds with a `default` entry")

    rn = doc.get("run")
    _sourced(rn, ("warmup_share", "peak_window_share", "min_requests_per_page", "mix_tolerance"))
    run = RunParams(_number(rn.get("warmup_share"), 0, 0.5), _number(rn.get("peak_window_share"), 0, 1, strict_min=True),
                    rn.get("min_requests_per_page").integer(minimum=1), _number(rn.get("mix_tolerance"), 0, 0.5))
    br = doc.get("browser")
    _sourced(br, ("cold_cache_share",))
    files = doc.get("files")
    _sourced(files, ("submission_bytes",))
    sizes = files.get("submission_bytes")
    quant: list[tuple[float, float]] = []
    for key, n in sizes.items():
        m = re.fullmatch(r"p(\d{1,2})", key)
        if not m or int(m.group(1)) == 0:
            sizes.fail("quantiles p1..p99 of bytes, e.g. {p10: 60000, p50: 350000, p90: 2500000}")
        quant.append((int(m.group(1)) / 100, _number(n, 1)))
    quant.sort()
    if len(quant) < 2 or any(b1 < b0 for (_, b0), (_, b1) in itertools.pairwise(quant)):
        sizes.fail("at least two quantiles, bytes growing with the quantile")

    return LoadModel(
        path=path,
        student=_role(roles.get("student")),
        trainer=_role(roles.get("trainer")),
        actions=StudentActions(_share(acts.get("forum_post_probability")),
                               _share(acts.get("assign_submit_probability")),
                               _share(acts.get("quiz_attempt_probability"))),
        weekday=WeekdayParams(profile),
        september=SeptemberParams(
            new_student_share=_share(sep.get("new_student_share")), window_s=window, peak_s=peak,
            session_s=_number(sep.get("session_minutes"), 0, strict_min=True) * 60,
            pages_per_session=sep.get("pages_per_session").integer(minimum=1),
            background_share=_number(sep.get("background_share"), 0, 1)),
        exam=ExamParams(_share(ex.get("cohort_share_of_largest_school")), start_w, duration, submit_w),
        deadline=DeadlineParams(
            _share(dl.get("cohort_share_of_largest_school")), _share(dl.get("last_hour_share")),
            _number(dl.get("window_minutes"), 0, strict_min=True) * 60,
            _number(dl.get("session_minutes"), 0, strict_min=True) * 60),
        smoke=SmokeParams(sm.get("users").integer(minimum=1, maximum=50),
                          _number(sm.get("duration_s"), 1, 600)),
        slo=Slo(_share(slo.get("error_rate_max")), slo.get("min_requests_for_p95").integer(minimum=1), p95),
        run=run,
        browser=BrowserParams(_share(br.get("cold_cache_share"))),
        submission_sizes=FileSizes(tuple(quant)),
    )


# -- arithmetic ---------------------------------------------------------------

@dataclass(frozen=True)
class Population:
    students: int
    trainers: int
    largest_school_students: int

    @classmethod
    def of(cls, inv: Inventory, scale: float = 1.0) -> Population:
        """Accounts of every school, times `scale` (2.0: "what if numbers double")."""
        return cls(students=round(sum(s.students for s in inv.schools) * scale),
                   trainers=round(sum(s.trainers for s in inv.schools) * scale),
                   largest_school_students=round(max(s.students for s in inv.schools) * scale))


@dataclass(frozen=True)
class RoleLoad:
    """One role in its peak hour."""

    accounts: int
    active_users: float           # distinct users with a session in the hour
    arrivals_per_s: float         # session starts per second
    concurrent: float             # sessions open at once (Little's law)
    pages_per_s: float


def role_peak(accounts: int, role: RoleParams) -> RoleLoad:
    active = accounts * role.active_share_peak_hour
    arrivals = active * role.sessions_per_active_user_hour / HOUR_S
    return RoleLoad(accounts=accounts, active_users=active, arrivals_per_s=arrivals,
                    concurrent=arrivals * role.session_s, pages_per_s=arrivals * role.pages_per_session)


@dataclass(frozen=True)
class ShapeLoad:
    """What a calendar shape asks of the platform at its worst moment."""

    shape: str
    peak_concurrent: float        # Locust users at the peak
    peak_arrivals_per_s: float    # session (or attempt / submission) starts per second at the peak
    peak_pages_per_s: float
    natural_duration_s: float     # length of the scenario in real time
    student_fraction: float       # share of the peak users that are students
    detail: dict[str, float]


def weekday_load(model: LoadModel, pop: Population) -> ShapeLoad:
    s, t = role_peak(pop.students, model.student), role_peak(pop.trainers, model.trainer)
    total = s.concurrent + t.concurrent
    return ShapeLoad("weekday", total, s.arrivals_per_s + t.arrivals_per_s, s.pages_per_s + t.pages_per_s,
                     24 * HOUR_S, s.concurrent / total if total else 1.0,
                     {"student_concurrent": s.concurrent, "trainer_concurrent": t.concurrent,
                      "student_active_users": s.active_users, "trainer_active_users": t.active_users})


def september_load(model: LoadModel, pop: Population) -> ShapeLoad:
    p = model.september
    newcomers = pop.students * p.new_student_share
    # Triangular arrivals over the window: the peak rate is 2N / window.
    peak_rate = 2 * newcomers / p.window_s
    storm = peak_rate * min(p.session_s, p.window_s)
    bg = weekday_load(model, pop)
    background = bg.peak_concurrent * p.background_share
    total = storm + background
    students = storm + background * bg.student_fraction
    return ShapeLoad("september", total, peak_rate + bg.peak_arrivals_per_s * p.background_share,
                     peak_rate * p.pages_per_session + bg.peak_pages_per_s * p.background_share,
                     p.window_s + p.session_s, students / total if total else 1.0,
                     {"newcomers": newcomers, "storm_concurrent": storm, "background_concurrent": background})


def exam_takers(model: LoadModel, pop: Population) -> int:
    return max(1, round(pop.largest_school_students * model.exam.cohort_share))


def exam_load(model: LoadModel, pop: Population, questions: int, takers: int | None = None) -> ShapeLoad:
    p = model.exam
    n = takers if takers is not None else exam_takers(model, pop)
    start_rate = n / p.start_window_s
    answering_s = p.duration_s - p.start_window_s - p.submit_window_s
    page_rate = n * questions / answering_s
    return ShapeLoad("exam", float(n), start_rate, max(page_rate, start_rate, n / p.submit_window_s),
                     p.duration_s, 1.0,
                     {"takers": float(n), "start_rate_per_s": start_rate, "answer_rate_per_s": page_rate,
                      "submit_rate_per_s": n / p.submit_window_s, "think_per_question_s": answering_s / questions})


def deadline_load(model: LoadModel, pop: Population) -> ShapeLoad:
    p = model.deadline
    submitters = pop.largest_school_students * p.cohort_share * p.last_hour_share
    # Linearly growing arrivals over the window: the rate at the deadline is 2N / window.
    peak_rate = 2 * submitters / p.window_s
    concurrent = peak_rate * p.session_s
    return ShapeLoad("deadline", concurrent, peak_rate, peak_rate * 6, p.window_s, 1.0,
                     {"submitters_last_hour": submitters, "uploads_per_s_at_deadline": peak_rate})


def smoke_load(model: LoadModel, pop: Population) -> ShapeLoad:
    p = model.smoke
    return ShapeLoad("smoke", float(p.users), p.users / 5.0, float("nan"), p.duration_s, 0.75, {})


def shape_load(name: str, model: LoadModel, pop: Population, questions: int = 3,
               takers: int | None = None) -> ShapeLoad:
    if name == "weekday":
        return weekday_load(model, pop)
    if name == "september":
        return september_load(model, pop)
    if name == "exam":
        return exam_load(model, pop, questions, takers)
    if name == "deadline":
        return deadline_load(model, pop)
    if name == "smoke":
        return smoke_load(model, pop)
    raise ValueError(f"shape {name!r} is not valid (one of: {', '.join(SHAPES)})")


# -- timelines: users over (model) time, what the LoadTestShape classes play ----

def weekday_users(model: LoadModel, t_model_s: float) -> float:
    """Share of the peak at model time t (0 = midnight), linear between hour midpoints."""
    prof = model.weekday.hourly_profile
    h = (t_model_s / HOUR_S - 0.5) % 24
    i = math.floor(h)
    frac = h - i
    return prof[i] * (1 - frac) + prof[(i + 1) % 24] * frac


def september_users(model: LoadModel, t_model_s: float, pop: Population) -> float:
    """Share of the peak concurrency at model time t after the welcome session starts."""
    p = model.september
    load = september_load(model, pop)

    def rate(t: float) -> float:   # triangular arrival rate, normalised to peak 1
        if t < 0 or t > p.window_s:
            return 0.0
        return t / p.peak_s if t <= p.peak_s and p.peak_s > 0 else (p.window_s - t) / (p.window_s - p.peak_s)

    # Open sessions = arrivals over the last session length (Riemann sum, 30 s steps).
    steps = max(1, int(p.session_s // 30))
    dt = p.session_s / steps
    storm_share = sum(rate(t_model_s - (k + 0.5) * dt) for k in range(steps)) * dt / min(p.session_s, p.window_s)
    storm = load.detail["storm_concurrent"] * storm_share
    return (storm + load.detail["background_concurrent"]) / load.peak_concurrent


def deadline_users(model: LoadModel, t_model_s: float) -> float:
    """Share of the peak at model time t in the last window before the deadline (linear growth)."""
    p = model.deadline
    return min(1.0, max(0.0, t_model_s / p.window_s))
