"""A compressed run keeps the model's page mix: every shape, played at 10x and
more in simulated time (the same scripts, think sampler and timeline the
Locust users play), shows each page type's expected share within the
model's stated tolerance once warm-up is left out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from moodleops.loadtests.fixture import LoadtestError
from moodleops.loadtests.model import load_model
from moodleops.loadtests.runner import RunRequest, make_plan, plan_mix, sim_plan
from moodleops.loadtests.sessions import mix_gap, page_mix, simulate

from moodleops.inventory import Inventory


def fixture(students: int, trainers: int, questions: int = 5) -> dict:
    return {"quiz_questions": questions, "password": "x",
            "students": [{"username": f"s{i}"} for i in range(students)],
            "trainers": [{"username": f"t{i}"} for i in range(trainers)]}


def request(shape: str, users: int, duration: float, **kw) -> RunRequest:
    return RunRequest(shape=shape, users=users, duration_s=duration, workers=kw.get("workers", 0),
                      think_scale=kw.get("think_scale", 1.0), scale=1.0, start_hour=0.0,
                      results_dir=Path("/nonexistent"), target="http://127.0.0.1:8080")


def observed(plan: dict, warmup_share: float, response_s: float = 0.05) -> dict[str, float]:
    reqs = simulate(sim_plan(plan), response_s=response_s, seed=7)
    skip = warmup_share * float(plan["timeline"]["duration_s"]) if plan["shape"] not in ("exam", "smoke") else 0
    return page_mix(Counter(name for t, name in reqs if t >= skip))


# (shape, users, wall seconds): natural lengths 24 h, 75 min, 60 min, 60 min.
CASES = [("weekday", 40, 8640), ("weekday", 40, 600), ("weekday", 20, 60),
         ("september", 40, 450), ("september", 30, 60),
         ("exam", 30, 360), ("exam", 30, 60),
         ("deadline", 20, 360), ("deadline", 20, 60)]


@pytest.mark.parametrize(("shape", "users", "duration"), CASES)
def test_compressed_run_keeps_the_page_mix(local_inventory: Inventory, shape: str, users: int,
                                           duration: float) -> None:
    model = load_model(local_inventory)
    plan = make_plan(request(shape, users, duration), local_inventory, model, fixture(200, 20))
    assert plan["timeline"]["compression"] >= 10
    expected = plan_mix(plan, response_s=0.05)
    page, gap = mix_gap(expected, observed(plan, model.run.warmup_share))
    assert gap <= model.run.mix_tolerance, f"{page} off by {gap:.3f}"
    assert set(expected) >= {"login:post", "logout"} or shape == "exam"


def test_uncompressed_think_times_distort_the_mix(local_inventory: Inventory) -> None:
    """What the check guards against: a 60 s weekday whose people think as long
    as in real life is mostly login forms."""
    model = load_model(local_inventory)
    plan = make_plan(request("weekday", 20, 60), local_inventory, model, fixture(200, 20))
    real_pace = {**plan, "think_scale": 1.0}
    mix = observed(real_pace, model.run.warmup_share)
    page, gap = mix_gap(plan_mix(plan, 0.05), mix)
    assert gap > 0.2 and page == "login:form" and mix["login:form"] > 0.5


def test_think_times_follow_the_compression(local_inventory: Inventory) -> None:
    model = load_model(local_inventory)
    plan = make_plan(request("deadline", 20, 300), local_inventory, model, fixture(200, 20))
    assert plan["think_scale"] == pytest.approx(1 / plan["timeline"]["compression"])
    slow = make_plan(request("deadline", 20, 300, think_scale=0.5), local_inventory, model, fixture(200, 20))
    assert slow["think_scale"] == pytest.approx(0.5 / slow["timeline"]["compression"])
    # The deadline's sessions are uploads: a fifth of its requests or so are the upload and the save.
    mix = plan["expected_mix"]
    assert mix["assign:upload"] == pytest.approx(mix["assign:save"]) and mix["assign:upload"] > 0.05


def test_fewer_accounts_than_concurrent_sessions_is_refused(local_inventory: Inventory) -> None:
    model = load_model(local_inventory)
    with pytest.raises(LoadtestError, match=r"fixture: 10 student account\(s\) for the weekday shape's 18 "):
        make_plan(request("weekday", 20, 60), local_inventory, model, fixture(10, 5))
    with pytest.raises(LoadtestError, match="trainer account"):
        make_plan(request("weekday", 40, 60), local_inventory, model, fixture(100, 0))
    with pytest.raises(LoadtestError, match="over 4 workers"):
        make_plan(request("exam", 30, 60, workers=4), local_inventory, model, fixture(31, 1))
    make_plan(request("exam", 30, 60, workers=4), local_inventory, model, fixture(34, 1))
    assert replace(model.run).mix_tolerance == model.run.mix_tolerance
