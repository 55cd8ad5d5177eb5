"""Calendar load shapes: the model's users-over-time curve for each scenario,
compressed into the run's wall-clock duration, played by Locust.

The pure part (`timeline`) turns a shape of the model into points
(wall second, users); the LoadTestShape classes interpolate those points on
the master. Compression = natural length of the scenario / run duration: a
24 h weekday played in 10 minutes runs at x144. Think times (hence sessions)
are compressed by the same factor (sessions.session_think_scale), so whole
sessions fit into the run and the page mix stays the model's; each simulated
user then requests x144 faster than a person.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from moodleops.loadtests.model import (
    LoadModel,
    Population,
    deadline_users,
    september_users,
    shape_load,
    weekday_users,
)

PLAN_ENV = "MOODLEOPS_LOADTEST_PLAN"
STEP_S = 1.0


@dataclass(frozen=True)
class Timeline:
    shape: str
    duration_s: float
    compression: float
    peak_users: int
    points: tuple[tuple[float, int], ...]     # (wall second, users), sorted
    spawn_rate: float                         # users per wall second when growing

    def users_at(self, t: float) -> int | None:
        """Users wanted at wall time t; None once the run is over."""
        if t >= self.duration_s:
            return None
        users = self.points[0][1]
        for ts, u in self.points:
            if ts > t:
                break
            users = u
        return users

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "duration_s": self.duration_s, "compression": self.compression,
                "peak_users": self.peak_users, "points": [list(p) for p in self.points],
                "spawn_rate": self.spawn_rate}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timeline:
        return cls(d["shape"], float(d["duration_s"]), float(d["compression"]), int(d["peak_users"]),
                   tuple((float(t), int(u)) for t, u in d["points"]), float(d["spawn_rate"]))


def timeline(shape: str, model: LoadModel, pop: Population, *, users: int | None, duration_s: float,
             start_hour: float = 0.0, questions: int = 3) -> Timeline:
    """Users over wall time for `shape`, scaled so the peak is `users` (default: the
    model's own peak for the population), lasting `duration_s` wall seconds."""
    load = shape_load(shape, model, pop, questions=questions, takers=users if shape == "exam" else None)
    peak = users if users is not None else max(1, math.ceil(load.peak_concurrent))
    if shape == "exam":
        # All takers start within the (compressed) start window, stay to the end.
        compression = model.exam.duration_s / duration_s
        window = model.exam.start_window_s / compression
        # Takers who started last submit up to one start window after the exam's
        # end, plus the time of the submit itself: the run stays up for them.
        grace = window + max(10.0, 0.1 * duration_s)
        return Timeline(shape, duration_s + grace, compression, peak, ((0.0, peak),), peak / max(window, 1.0))
    if shape == "smoke":
        return Timeline(shape, duration_s, 1.0, peak, ((0.0, peak),), float(peak))

    natural = load.natural_duration_s
    compression = natural / duration_s
    points: list[tuple[float, int]] = []
    n = max(1, int(duration_s // STEP_S))
    for i in range(n):
        t_wall = i * duration_s / n
        t_model = t_wall * compression
        if shape == "weekday":
            share = weekday_users(model, t_model + start_hour * 3600)
        elif shape == "september":
            share = september_users(model, t_model, pop)
        else:
            share = deadline_users(model, t_model)
        u = max(1, round(peak * share))
        if not points or points[-1][1] != u:
            points.append((round(t_wall, 3), u))
    # Growth per wall second at the steepest step, so Locust follows the curve.
    steepest = max([b[1] - a[1] for a, b in itertools.pairwise(points)] + [points[0][1]])
    return Timeline(shape, duration_s, compression, peak, tuple(points), float(max(1, steepest)))


def load_plan() -> dict[str, Any]:
    """The run plan written by `moodleops loadtest run` (path in $MOODLEOPS_LOADTEST_PLAN)."""
    path = os.environ.get(PLAN_ENV)
    if not path:
        raise RuntimeError(f"{PLAN_ENV} is not set: start runs with `moodleops loadtest run`")
    with open(path, encoding="utf-8") as fh:
        plan: dict[str, Any] = json.load(fh)
    return plan


