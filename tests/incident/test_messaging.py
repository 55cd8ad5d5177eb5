"""Messaging suspension: the user's own session can no longer send a message
(web service core_message_send_instant_messages through /lib/ajax/service.php,
as the browser does); reinstating lets it send again."""

from __future__ import annotations

from typing import Any

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import Who

pytestmark = pytest.mark.stack

WHO = Who(reason="test: spam from m1", ticket="TEST-M", operator="pytest")


def _send(session: Any, to_userid: int, text: str) -> tuple[bool, str]:
    resp = session.http.post(
        f"{session.wwwroot}/lib/ajax/service.php",
        params={"sesskey": session.sesskey, "info": "core_message_send_instant_messages"},
        json=[{"index": 0, "methodname": "core_message_send_instant_messages",
               "args": {"messages": [{"touserid": to_userid, "text": text, "textformat": 1}]}}],
        timeout=60)
    resp.raise_for_status()
    answer = resp.json()[0]
    if answer.get("error"):
        return False, str(answer.get("exception", {}).get("errorcode") or answer)
    msg = answer["data"][0]
    return int(msg["msgid"]) > 0, str(msg.get("errormessage", ""))


def test_messaging_suspend_and_reinstate(world, capsys) -> None:
    session = world.login("m1")
    ok, why = _send(session, world.ids["b1"], "hello before")
    assert ok, f"m1 must be able to message b1 before the suspension: {why}"

    rb = world.runbook()
    out = rb.run(rb.messaging((world.username("m1"), "admin"), block=True), apply=True, who=WHO)
    assert [c.label for c in out.plan.changes] == [world.username("m1")]
    assert "site administrator" in out.plan.skipped[0].why
    assert world.users_state()["m1"]["messaging_blocked"]

    ok, why = _send(session, world.ids["b1"], "spam")
    assert not ok and "nopermissions" in why, why
    # The account itself is not suspended: m1 still logs in.
    assert world.login("m1").is_logged_in()

    # Re-running the same runbook changes nothing.
    again = rb.run(rb.messaging((world.username("m1"), "admin"), block=True), apply=True, who=WHO)
    assert again.plan.changes == [] and again.incident is None
    # `messaging reinstate` does not lift a block an open incident holds: it names the incident.
    assert main([*world.cli_args(), "incident", "messaging", "reinstate", "--users", world.username("m1"),
                 "--reason", "cleaned", "--ticket", "TEST-M", "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 0
    assert f"held by open incident {out.incident}" in capsys.readouterr().out
    assert world.users_state()["m1"]["messaging_blocked"]

    back = rb.run(rb.reinstate(out.incident), apply=True, who=WHO)
    assert [r["status"] for r in back.results] == ["changed"]
    assert not world.users_state()["m1"]["messaging_blocked"]
    ok, why = _send(session, world.ids["b1"], "hello after")
    assert ok, why
