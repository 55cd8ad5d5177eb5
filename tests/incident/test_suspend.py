"""Suspend a school, reinstate it exactly, drift, idempotence — on the real stack,
proved by HTTP logins and the sessions they opened."""

from __future__ import annotations

import json
import time

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import Who
from moodleops.webclient import LoginFailed

pytestmark = pytest.mark.stack

WHO = Who(reason="test: intrusion in school A", ticket="TEST-1", operator="pytest")


def _logs_in(world, short: str) -> bool:
    try:
        world.login(short)
        return True
    except LoginFailed:
        return False


def test_suspend_school_then_reinstate_exactly(world, capsys) -> None:
    rb = world.runbook()
    before = world.users_state()
    session_a1 = world.login("a1")
    assert session_a1.is_logged_in()

    # Dry run: says what, changes nothing.
    make = rb.suspend(schools=(world.codes["a"],), hide_category=True)
    dry = rb.run(make, apply=False, who=WHO)
    planned = {c.label for c in dry.plan.changes}
    assert planned == {world.username(s) for s in ("a1", "a2", "a4", "e1", "e2", "e3")} | {
        world.inv.school(world.codes["a"]).category_idnumber}
    skipped = {s.label: s.why for s in dry.plan.skipped}
    assert "already suspended" in skipped[world.username("a3")]
    assert "also in school" in skipped[world.username("ab")]
    assert all(r["status"] == "would_change" for r in dry.results)
    assert world.users_state() == before
    assert session_a1.is_logged_in()

    # Apply.
    out = rb.run(make, apply=True, who=WHO)
    assert out.incident and out.incident.startswith("INC-")
    assert out.count("changed") == len(planned)
    assert not _logs_in(world, "a1"), "a suspended user of school A must not log in"
    assert not session_a1.is_logged_in(), "the session opened before the suspension must be dead"
    assert _logs_in(world, "b1"), "a school B user still logs in"
    assert _logs_in(world, "ab"), "a user of A and B is left alone"
    state = world.users_state()
    assert state["a2"]["suspended"] == 1 and state["b1"]["suspended"] == 0

    # Journal on the host and in the operator's copy, same line; ids and usernames only.
    # Write-ahead: the intent (every object, before and planned after), then chunk acks, then the close.
    host_lines = rb.journal.path.read_text().splitlines()
    mine = [json.loads(ln) for ln in host_lines if json.loads(ln)["incident"] == out.incident]
    assert mine[0]["type"] == "intent" and mine[-1]["type"] == "close"
    assert {r["type"] for r in mine[1:-1]} == {"chunk"}
    rec = mine[0]
    assert rec["ticket"] == "TEST-1" and rec["operator"] == "pytest"
    assert rec["os_user"] and rec["scope"]["schools"] == [world.codes["a"]]
    a1 = next(c for c in rec["entries"] if c["label"] == world.username("a1"))
    assert a1["before"]["suspended"] == 0 and a1["to"] == {"suspended": 1} and a1["id"] == world.ids["a1"]
    acked = next(r for c in mine[1:-1] for r in c["results"] if r["id"] == world.ids["a1"])
    assert acked["status"] == "changed" and acked["after"]["suspended"] == 1
    text = json.dumps(mine)
    assert "email" not in text and "Test" not in text
    assert rb.journal.copy_path is not None
    assert rb.journal.copy_path.read_text().splitlines()[-1] == host_lines[-1]

    # Re-running changes nothing and journals nothing.
    again = rb.run(rb.suspend(schools=(world.codes["a"],), hide_category=True), apply=True, who=WHO)
    assert again.plan.changes == [] and again.incident is None
    assert rb.journal.path.read_text().splitlines() == host_lines

    # A hand edit of a4 between suspend and reinstate.
    time.sleep(1.1)   # timemodified has a one-second grain: make the edit visible in it
    world.hand_edit("a4", firstname="Edited")

    # Reinstate through the CLI: dry run reports the drift, apply leaves it, exit 1.
    assert main([*world.cli_args(), "incident", "reinstate", out.incident,
                 "--journal-copy", str(world.journal_copy)]) == 1
    text = capsys.readouterr().out
    assert "DRIFT" in text and world.username("a4") in text and "dry run" in text
    assert world.users_state()["a1"]["suspended"] == 1

    assert main([*world.cli_args(), "incident", "reinstate", out.incident, "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 1
    capsys.readouterr()
    assert _logs_in(world, "a1") and _logs_in(world, "a2")
    assert not _logs_in(world, "a3"), "suspended before the incident: stays suspended"
    assert not _logs_in(world, "a4"), "drift is left as is without --force"
    assert world.runbook().helper.read(categories=(world.inv.school(world.codes["a"]).category_idnumber,)
                                       ).categories[world.inv.school(world.codes["a"]).category_idnumber][
        "visible"] == 1

    # --force restores the drifted account; then the incident is closed.
    assert main([*world.cli_args(), "incident", "reinstate", out.incident, "--force", "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 0
    capsys.readouterr()
    after = world.users_state()
    assert {k: v["suspended"] for k, v in after.items()} == {k: v["suspended"] for k, v in before.items()}
    assert main([*world.cli_args(), "incident", "reinstate", out.incident, "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 2
    assert "already reinstated" in capsys.readouterr().err
    assert world.runbook().journal.incidents()[out.incident].state == "reinstated"


def test_suspend_user_list_csv_and_idempotence(world, tmp_path) -> None:
    rb = world.runbook()
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(f"username,comment\n{world.username('b2')},spam\n{world.username('ab')},x\n")
    from moodleops.incident.csvinput import read_user_csv
    users = tuple(read_user_csv(csv_file))
    first = rb.run(rb.suspend(users=users), apply=True, who=WHO)
    # Named explicitly: the two-school user is included.
    assert {c.label for c in first.plan.changes} == {world.username("b2"), world.username("ab")}
    second = rb.run(rb.suspend(users=users), apply=True, who=WHO)
    assert second.plan.changes == [] and second.incident is None
    back = rb.run(rb.reinstate(first.incident), apply=True, who=WHO)
    assert back.count("changed") == 2
    state = world.users_state()
    assert state["b2"]["suspended"] == 0 and state["ab"]["suspended"] == 0


def test_platform_suspend_is_planned_not_applied(world, capsys) -> None:
    # Maintenance mode would stop every other engineer's tests on the shared stack: dry run only.
    assert main([*world.cli_args(), "incident", "suspend", "--platform", "--message", "Maintenance",
                 "--reason", "flaw", "--ticket", "TEST-P", "--journal-copy", str(world.journal_copy)]) == 0
    out = capsys.readouterr().out
    assert "platform" in out and "cli_maintenance" in out and "would change" in out
    assert world.runbook().helper.read().platform["cli_maintenance"] is False
