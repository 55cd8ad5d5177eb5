"""Short, bounded runs of every flow against the real local stack
(127.0.0.1:8080, a dozen users, about two minutes in all), checked in Moodle
afterwards: submitted quiz attempts, forum replies and uploaded files exist;
a short weekday keeps the model's page mix and samples the server side."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from moodleops.loadtests import fixture as fx
from moodleops.loadtests.model import load_model
from moodleops.loadtests.summary import SCHEMA

from moodleops.cli import main
from moodleops.errors import ExitStatus
from moodleops.inventory import is_loopback, load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site

pytestmark = pytest.mark.stack
SMOKE_USERS = 6          # weights 3:1 -> some students doing every student flow, trainers grading
EXAM_USERS = 5
WEEKDAY_USERS = 12
# The CLI's one exit table decides, not a copy of it here.
EXIT_OF = {"PASS": ExitStatus.OK, "FAIL": ExitStatus.PROBLEMS, "INCONCLUSIVE": ExitStatus.INCONCLUSIVE}


@pytest.fixture(scope="module")
def prepared(site: Site, moodle: MoodleCLI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    # Traffic only to this machine.
    assert is_loopback(urlsplit(site.wwwroot).hostname or "")
    fxdir = tmp_path_factory.mktemp("fixtures")
    prefix = fx.new_prefix()
    rc = main(["loadtest", "prepare", "--prefix", prefix, "--students", "24", "--trainers", "3",
               "--questions", "3", "--courses", "3", "--fixture-dir", str(fxdir)])
    assert rc == 0
    yield prefix, fxdir
    assert main(["loadtest", "cleanup", "--prefix", prefix, "--yes", "--fixture-dir", str(fxdir)]) == 0
    after = fx.inspect(moodle, prefix)
    assert after["prepared"] is False and after["users"] == 0


def _run(prefix: str, fxdir: Path, results: Path, *args: str) -> tuple[int, dict]:
    rc = main(["loadtest", "run", "--prefix", prefix, "--fixture-dir", str(fxdir), "--results", str(results),
               "--think-scale", "0.01", "--quiet", *args])
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    return rc, summary


def test_prepare_created_the_fixture(prepared, moodle: MoodleCLI) -> None:
    prefix, fxdir = prepared
    state = fx.inspect(moodle, prefix)
    assert state["prepared"] is True and state["users"] == 27
    assert state["quiz_attempts_finished"] == 0 and state["forum_posts"] == 0
    record = json.loads((fxdir / f"{prefix}.json").read_text(encoding="utf-8"))
    assert oct((fxdir / f"{prefix}.json").stat().st_mode & 0o777) == "0o600"     # it holds a password
    assert len(record["students"]) == 24 and record["quiz_questions"] == 3
    # Several courses in several schools' categories, the accounts spread over them.
    assert len(record["courses"]) == 3 and len(record["schools"]) == 3
    assert len({c["course_id"] for c in record["courses"]}) == 3
    assert sorted({u["course"] for u in record["students"]}) == [0, 1, 2]
    # Course documents sized from the model's file sizes, not a few bytes.
    sizes = load_model(load_inventory("local")).submission_sizes.quantiles
    assert all(sizes[0][1] <= c["resource_bytes"] <= sizes[-1][1] for c in record["courses"])
    # Same prefix twice: refused, nothing changed.
    assert main(["loadtest", "prepare", "--prefix", prefix, "--fixture-dir", str(fxdir)]) == 2


def test_smoke_run_completes_every_flow(prepared, moodle: MoodleCLI, tmp_path: Path) -> None:
    prefix, fxdir = prepared
    rc, summary = _run(prefix, fxdir, tmp_path, "--shape", "smoke", "--users", str(SMOKE_USERS),
                       "--duration", "25")
    pages = summary["pages"]
    assert summary["schema"] == SCHEMA and summary["shape"] == "smoke" and summary["users"] == SMOKE_USERS
    assert summary["totals"]["failures"] == 0, pages
    students = pages["quiz:submit"]["requests"]
    assert students >= 1 and pages["grading"]["requests"] >= 1          # both roles ran
    assert summary["locust_exit_code"] == (1 if summary["totals"]["failures"] else 0)
    for page in ("login:post", "ajax:core_calendar_get_action_events_by_timesort",
                 "ajax:core_course_get_enrolled_courses_by_timeline_classification", "course", "resource",
                 "forum:discuss", "forum:post", "assign:upload", "assign:save", "quiz:start", "quiz:report",
                 "logout"):
        assert pages[page]["requests"] >= 1 and pages[page]["failures"] == 0, page
    assert (tmp_path / "report.html").is_file() and (tmp_path / "locust_stats_final.csv").is_file()
    # A one-shot run of six people: pages the trainers ran once or twice are too
    # few to judge, and the verdict says so rather than passing.
    assert rc == EXIT_OF[summary["verdict"]["status"]]
    # What Moodle holds afterwards, counted among this run's users only.
    state = fx.inspect(moodle, prefix)
    assert state["quiz_attempts_finished"] == students
    assert state["quiz_attempts_inprogress"] == 0
    assert state["forum_posts"] == pages["forum:post"]["requests"]
    assert state["assign_submissions"] == pages["assign:save"]["requests"]
    assert state["assign_files"] == state["assign_submissions"]


def test_exam_takers_start_together_and_all_submit(prepared, moodle: MoodleCLI, tmp_path: Path) -> None:
    prefix, fxdir = prepared
    before = fx.inspect(moodle, prefix)["quiz_attempts_finished"]
    rc, summary = _run(prefix, fxdir, tmp_path, "--shape", "exam", "--users", str(EXAM_USERS),
                       "--duration", "20")
    pages = summary["pages"]
    assert summary["totals"]["failures"] == 0, pages
    assert pages["quiz:start"]["requests"] == EXAM_USERS
    assert pages["quiz:submit"]["requests"] == EXAM_USERS
    state = fx.inspect(moodle, prefix)
    assert state["quiz_attempts_finished"] - before == EXAM_USERS
    assert state["quiz_attempts_inprogress"] == 0
    assert summary["compression"] == pytest.approx(3600 / 20)
    assert rc == EXIT_OF[summary["verdict"]["status"]]
    # The attempt page's autosave, compressed like the exam: a minute after the
    # answer changes, within the ~19 model minutes spent on each question.
    assert pages["quiz:autosave"]["requests"] >= EXAM_USERS and pages["quiz:autosave"]["failures"] == 0


def test_short_weekday_keeps_the_mix_and_samples_the_server(prepared, tmp_path: Path) -> None:
    prefix, fxdir = prepared
    rc = main(["loadtest", "run", "--prefix", prefix, "--fixture-dir", str(fxdir), "--results", str(tmp_path),
               "--quiet", "--shape", "weekday", "--users", str(WEEKDAY_USERS), "--duration", "60"])
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["totals"]["failures"] == 0, summary["pages"]
    assert summary["compression"] == pytest.approx(1440)
    assert summary["session_think_scale"] == pytest.approx(1 / 1440)
    mix = summary["mix"]
    assert mix["within"], (mix["worst_page"], mix["gap"], mix["observed"], mix["expected"])
    assert summary["steady"]["from_s"] == pytest.approx(0.15 * 60)
    assert summary["peak_window"]["totals"]["requests"] > 0
    # Cold browsers fetched the theme's CSS and the combined YUI/AMD JavaScript.
    assert {"static:css", "static:js", "static:amd"} <= set(summary["browser"])
    server = summary["server"]
    assert server["errors"] == {}, server["errors"]
    assert len(server["samples"]) >= 20                          # every 2 s over 60 s
    busy = [s for s in server["samples"] if s["php_fpm"]["localhost"]["active"] >= 1]
    assert busy and all(0 <= s["cpu"]["localhost"] <= 1 for s in server["samples"][1:])
    assert max(s["db"]["connections"] for s in server["samples"]) >= 1    # Moodle's backends, seen read-only
    assert any(v > 0 for s in server["samples"] for v in s["generator_cpu"].values())
    assert server["first_saturated"] in (None, *server["saturation"])
    assert rc == EXIT_OF[summary["verdict"]["status"]]
