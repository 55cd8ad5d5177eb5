"""Load tests stay on this machine unless explicitly forced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moodleops.loadtests.cli import (
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    EXIT_SLO_FAILED,
    RUN_EXIT_STATUS,
    report_run,
)
from moodleops.loadtests.fixture import LoadtestError, check_prefix, guard_inventory, guard_target
from moodleops.loadtests.forms import find_form

from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.rehearsal.spec import own_addresses


def test_prepare_and_cleanup_refuse_a_production_inventory(tmp_path: Path, capsys) -> None:
    rc = main(["--inventory", "production", "loadtest", "prepare", "--prefix", "ltguard1",
               "--fixture-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moodleops: error: inventory 'production' is not loopback-only")
    assert "--force-production" in err
    assert list(tmp_path.iterdir()) == []       # nothing recorded, nothing created
    rc = main(["--inventory", "production", "loadtest", "cleanup", "--prefix", "ltguard1", "--yes",
               "--fixture-dir", str(tmp_path)])
    assert rc == 2 and "not loopback-only" in capsys.readouterr().err


def test_guard_functions() -> None:
    with pytest.raises(LoadtestError):
        guard_inventory(load_inventory("production"), False, "prepare")
    guard_inventory(load_inventory("production"), True, "prepare")      # forced
    guard_inventory(load_inventory("local"), False, "prepare")
    assert guard_target("http://127.0.0.1:8080/", False) == "http://127.0.0.1:8080"
    assert guard_target("http://[::1]:8080", False) == "http://[::1]:8080"
    for url in ("https://moodle.univ-toulouse.fr", "http://10.0.0.5:8080", "http://127.example.org"):
        with pytest.raises(LoadtestError, match="not a loopback address"):
            guard_target(url, False)
    # The rehearsal's own containers are targets (its lb1), nothing else of its network.
    rehearsal = load_inventory("rehearsal")
    guard_inventory(rehearsal, False, "prepare")
    own = own_addresses(rehearsal)
    lb1 = rehearsal.group("loadbalancer")[0].address
    assert guard_target(f"https://{lb1}/", False, own) == f"https://{lb1}"
    with pytest.raises(LoadtestError, match="nor a container of this inventory's rehearsal"):
        guard_target(f"https://{lb1.rsplit('.', 1)[0]}.99", False, own)
    assert own_addresses(load_inventory("production")) == frozenset()
    for prefix in ("admin", "lt", "lt-x1y2", "LTABC1", "lt" + "a" * 21):
        with pytest.raises(LoadtestError, match="--prefix"):
            check_prefix(prefix)


def test_run_refuses_a_remote_target(tmp_path: Path, capsys) -> None:
    rc = main(["loadtest", "run", "--prefix", "ltguard1", "--shape", "smoke", "--target",
               "http://192.0.2.10", "--fixture-dir", str(tmp_path), "--results", str(tmp_path / "r")])
    assert rc == 2
    assert "192.0.2.10" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_run_rejects_a_bad_shape(capsys) -> None:
    assert main(["loadtest", "run", "--prefix", "ltguard1", "--shape", "lunch"]) == 2
    assert "lunch" in capsys.readouterr().err


def test_forms_send_what_a_browser_sends() -> None:
    html = """<form action="/mod/quiz/processattempt.php" method="post">
      <input type="hidden" name="attempt" value="7"><input type="hidden" name="slots" value="1">
      <input type="radio" name="q1:1_answer" value="1"><input type="radio" name="q1:1_answer" value="0">
      <input type="checkbox" name="flag" value="1">
      <textarea name="note">hi &amp; bye</textarea>
      <select name="s"><option value="a">A</option><option value="b" selected>B</option></select>
      <input type="submit" name="next" value="Next page"><input type="submit" name="previous" value="Back">
    </form>"""
    form = find_form(html, action_contains="processattempt.php", has_field="slots")
    assert form is not None
    sent = form.submission(button="next")
    assert sent == [("attempt", "7"), ("slots", "1"), ("note", "hi & bye"), ("s", "b"),
                    ("q1:1_answer", "1"), ("next", "Next page")]


def test_run_refuses_a_fixture_smaller_than_the_peak(tmp_path: Path, capsys) -> None:
    """Fewer accounts than the shape's concurrent sessions: refused before
    anything starts (two sessions in one account would share a quiz attempt)."""
    record = {"prefix": "ltsmall1", "password": "x", "quiz_questions": 3, "course_id": 1, "forum_cmid": 1,
              "discussion_id": 1, "discussion_post_id": 1, "resource_cmid": 1, "quiz_cmid": 1, "assign_cmid": 1,
              "students": [{"username": f"ltsmall1s{i:04d}", "course": 0} for i in range(3)],
              "trainers": [{"username": "ltsmall1t0001", "course": 0}]}
    (tmp_path / "ltsmall1.json").write_text(json.dumps(record), encoding="utf-8")
    rc = main(["loadtest", "run", "--prefix", "ltsmall1", "--shape", "weekday", "--users", "20",
               "--fixture-dir", str(tmp_path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moodleops: error: fixture: 3 student account(s) for the weekday shape's 18 concurrent")
    assert "--students 18" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_each_verdict_has_its_exit_status(tmp_path: Path, capsys) -> None:
    base = {"shape": "weekday", "users": 5, "totals": {"requests": 10, "rps": 1.0, "error_rate": 0.0, "p95_ms": 100}}
    missing = [{"page": "quiz:submit", "requests": 1, "minimum": 3}]
    cases = [({"status": "PASS", "violations": [], "missing": []}, EXIT_PASS),
             ({"status": "FAIL", "violations": [{"page": "course", "metric": "p95", "value": 4000, "limit": 2500,
                                                 "scope": "peak_window"}], "missing": missing}, EXIT_SLO_FAILED),
             ({"status": "INCONCLUSIVE", "violations": [], "missing": missing}, EXIT_INCONCLUSIVE)]
    for verdict, code in cases:
        assert report_run({**base, "verdict": verdict}, tmp_path / "summary.json") == code
    out = capsys.readouterr().out
    assert "SLO verdict: INCONCLUSIVE" in out and "quiz:submit: ran 1 time(s) after warm-up, at least 3" in out
    assert EXIT_INCONCLUSIVE == 8 and set(RUN_EXIT_STATUS) == {0, 1, 2, 4, 8}


class _Recorder:
    """A client that answers like Moodle's autosave / service.php and records the time of each call."""

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.calls = clock, []

    def request(self, method, path, name, **kw):
        self.calls.append((round(self.clock[0], 3), name))
        body = '{"status":"OK"}' if "autosave" in path else '[{"error":false,"data":true}]'
        return _Resp(body)


class _Resp:
    status_code = 200

    def __init__(self, text: str) -> None:
        self.text = text
        self.headers = {"content-type": "application/json"}

    def __enter__(self):
        return self

    def __exit__(self, *a) -> bool:
        return False

    def success(self) -> None:
        pass

    def failure(self, msg: str) -> None:
        raise AssertionError(msg)


def test_quiz_page_timers_run_in_compressed_time() -> None:
    """On an attempt page the autosave fires its period after the answer (a
    third into the thinking) and the keep-alive every period, both divided by
    the compression; none fires once the person has moved on."""
    from moodleops.loadtests.flows import Browser, Fixture, MoodleFlows

    clock = [0.0]
    client = _Recorder(clock)
    flows = MoodleFlows(client, Fixture(1, 1, 1, 1, 1, 1, 1, 1), lambda: None, Browser(cold=False, time_scale=0.1),
                        sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    flows.sesskey = "abc"
    html = ('<form action="/mod/quiz/processattempt.php"><input type="hidden" name="attempt" value="7">'
            '<input type="hidden" name="slots" value="1"><input type="radio" name="q1:1_answer" value="1"></form>'
            # As Moodle 4.1 renders them (js_writer::function_call, js_call_amd): the autosave
            # period is get_config()'s string, json-encoded with its quotes.
            '<script>Y.use("moodle-mod_quiz-autosave",function() {M.mod_quiz.autosave.init("60");\n});'
            "M.util.js_pending('core/network'); require(['core/network'], function(amd) "
            '{amd.keepalive(40, 0, "sessionerroruser", "error"); M.util.js_complete(\'core/network\');});'
            '</script>')
    form = find_form(html, action_contains="processattempt.php", has_field="slots")
    flows._dwell_on_question(30.0, form, html)          # 300 model seconds on the question
    assert clock[0] == pytest.approx(30.0)
    # keep-alive at 4, 8, ... 28 s; autosave at 10 + 6 = 16 s.
    assert client.calls == [(4.0, "ajax:core_session_touch"), (8.0, "ajax:core_session_touch"),
                            (12.0, "ajax:core_session_touch"), (16.0, "quiz:autosave"),
                            (16.0, "ajax:core_session_touch"), (20.0, "ajax:core_session_touch"),
                            (24.0, "ajax:core_session_touch"), (28.0, "ajax:core_session_touch")]
    client.calls.clear()
    flows._dwell_on_question(3.0, form, html)           # moved on before any timer
    assert client.calls == []


def test_locusts_own_failure_is_not_a_verdict(tmp_path: Path, local_inventory) -> None:
    """A locustfile that cannot load its plan: Locust fails before any request;
    the runner reports that failure (exit 4 in the CLI), not a verdict."""
    from moodleops.loadtests.runner import LocustFailed, RunRequest, locust_results, run_locust

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"timeline": {"shape": "no-such-shape", "duration_s": 5}}), encoding="utf-8")
    req = RunRequest(shape="smoke", users=1, duration_s=5, workers=0, think_scale=1.0, scale=1.0, start_hour=0.0,
                     results_dir=tmp_path, target="http://127.0.0.1:9")
    code = run_locust(plan, req, local_inventory, echo=False)
    assert code != 0
    with pytest.raises(LocustFailed, match=f"locust exited with status {code} and wrote no statistics: .*KeyError"):
        locust_results(code, tmp_path)


def test_a_late_exam_taker_still_answers_within_the_time_limit() -> None:
    """A taker whose login queued behind the synchronised ones (9 s late, 10 s
    left for 3 questions they would each give 9 s) makes it up on the
    questions and is done by the start of the submit window; one on time
    takes the time they want."""
    from moodleops.loadtests.sessions import paced_question_s

    def answer(start: float, wanted: list[float], answer_by: float) -> list[float]:
        t, spent = start, []
        for left, w in zip(range(len(wanted), 0, -1), wanted, strict=True):
            spent.append(paced_question_s(w, t, answer_by, left))
            t += spent[-1]
        return spent

    late = answer(9.0, [9.0, 9.0, 9.0], 19.0)
    assert sum(late) == pytest.approx(10.0) and all(s > 0 for s in late)
    assert answer(1.0, [3.0, 5.0, 4.0], 19.0) == [3.0, 5.0, 4.0]
    assert answer(25.0, [3.0], 19.0) == [0.0]            # past the limit: straight to the submit
