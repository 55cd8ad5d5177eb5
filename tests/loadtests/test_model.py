"""The concurrency model's arithmetic, on the real inventory and on small numbers worked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from moodleops.loadtests.model import (
    Population,
    deadline_load,
    exam_load,
    load_model,
    role_peak,
    september_load,
    weekday_load,
    weekday_users,
)
from moodleops.loadtests.timeline import timeline

from moodleops.inventory import Inventory, InventoryError


@pytest.fixture(scope="module")
def model(local_inventory: Inventory):
    return load_model(local_inventory)


def test_population_comes_from_the_schools(local_inventory: Inventory) -> None:
    pop = Population.of(local_inventory)
    assert pop.students == sum(s.students for s in local_inventory.schools)
    assert pop.trainers == sum(s.trainers for s in local_inventory.schools)
    doubled = Population.of(local_inventory, 2.0)
    assert doubled.students == 2 * pop.students
    assert doubled.largest_school_students == 2 * max(s.students for s in local_inventory.schools)


def test_role_peak_is_littles_law(model) -> None:
    # 1000 accounts, 20% active, 1 session each in the hour, 20 min sessions of 12 pages:
    # 200 sessions/h = 0.0556/s; concurrent = 0.0556 * 1200 s = 66.7; pages = 0.0556 * 12.
    load = role_peak(1000, model.student)
    assert load.active_users == pytest.approx(1000 * model.student.active_share_peak_hour)
    rate = load.active_users * model.student.sessions_per_active_user_hour / 3600
    assert load.arrivals_per_s == pytest.approx(rate)
    assert load.concurrent == pytest.approx(rate * model.student.session_s)
    assert load.pages_per_s == pytest.approx(rate * model.student.pages_per_session)
    assert model.student.mean_think_s == pytest.approx(model.student.session_s / model.student.pages_per_session)


def test_weekday_peak_is_students_plus_trainers_and_scales_linearly(model, local_inventory) -> None:
    pop = Population.of(local_inventory)
    wd = weekday_load(model, pop)
    s, t = role_peak(pop.students, model.student), role_peak(pop.trainers, model.trainer)
    assert wd.peak_concurrent == pytest.approx(s.concurrent + t.concurrent)
    assert wd.student_fraction == pytest.approx(s.concurrent / (s.concurrent + t.concurrent))
    assert weekday_load(model, Population.of(local_inventory, 2)).peak_concurrent == \
        pytest.approx(2 * wd.peak_concurrent, rel=1e-3)
    # The hour profile: peak hour (10:00-11:00) gives 1.0, the night almost nothing.
    assert weekday_users(model, 10.5 * 3600) == pytest.approx(1.0)
    assert weekday_users(model, 3.5 * 3600) < 0.05


def test_exam_september_deadline_by_hand(model) -> None:
    pop = Population(students=3000, trainers=300, largest_school_students=300)
    ex = exam_load(model, pop, questions=10, takers=120)
    assert ex.peak_concurrent == 120
    assert ex.peak_arrivals_per_s == pytest.approx(120 / model.exam.start_window_s)
    answering = model.exam.duration_s - model.exam.start_window_s - model.exam.submit_window_s
    assert ex.detail["answer_rate_per_s"] == pytest.approx(120 * 10 / answering)

    sep = september_load(model, pop)
    newcomers = 3000 * model.september.new_student_share
    assert sep.detail["newcomers"] == pytest.approx(newcomers)
    peak_rate = 2 * newcomers / model.september.window_s
    assert sep.detail["storm_concurrent"] == pytest.approx(peak_rate * model.september.session_s)

    dl = deadline_load(model, pop)
    n = 300 * model.deadline.cohort_share * model.deadline.last_hour_share
    assert dl.detail["submitters_last_hour"] == pytest.approx(n)
    assert dl.peak_concurrent == pytest.approx(2 * n / model.deadline.window_s * model.deadline.session_s)


def test_timeline_compresses_the_calendar_and_scales_to_users(model, local_inventory) -> None:
    pop = Population.of(local_inventory)
    tl = timeline("weekday", model, pop, users=50, duration_s=240)
    assert tl.compression == pytest.approx(24 * 3600 / 240)
    assert max(u for _, u in tl.points) == 50          # the peak hour plays at --users
    assert tl.users_at(0) < 5                          # midnight
    assert tl.users_at(240) is None                    # the run is over
    exam = timeline("exam", model, pop, users=40, duration_s=60)
    assert exam.users_at(1) == 40
    # All 40 start within the compressed 2-minute window.
    assert exam.spawn_rate == pytest.approx(40 / (model.exam.start_window_s * 60 / model.exam.duration_s))
    default = timeline("weekday", model, pop, users=None, duration_s=60)
    assert default.peak_users == math.ceil(weekday_load(model, pop).peak_concurrent)


def test_every_block_needs_a_source_and_sane_values(local_inventory, tmp_path: Path) -> None:
    doc = yaml.safe_load((local_inventory.root / "loadmodel.yml").read_text(encoding="utf-8"))
    del doc["roles"]["student"]["source"]
    bad = tmp_path / "loadmodel.yml"
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(InventoryError, match="roles.student.source"):
        load_model(local_inventory, bad)
    doc = yaml.safe_load((local_inventory.root / "loadmodel.yml").read_text(encoding="utf-8"))
    doc["roles"]["student"]["active_share_peak_hour"] = 1.5
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(InventoryError, match="active_share_peak_hour"):
        load_model(local_inventory, bad)
