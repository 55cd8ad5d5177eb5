"""Web-service tokens of suspended users: counted in the report; revoked with
--revoke-tokens (journalled, irreversible, and the dry run says so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moodleops.cli import main

pytestmark = pytest.mark.stack

FIXTURE = str(Path(__file__).with_name("fixture.php"))

WHY = ("--reason", "test: leaked tokens", "--ticket", "TEST-T")


def _tokens(world, short: str) -> int:
    snap = world.runbook().helper.read(userids=(world.ids[short],))
    return snap.users[0].tokens


def test_tokens_counted_then_revoked_irreversibly(world, capsys) -> None:
    world.moodle.tool(FIXTURE, payload={"action": "token", "userid": world.ids["b2"]})
    world.moodle.tool(FIXTURE, payload={"action": "token", "userid": world.ids["b2"]})
    assert _tokens(world, "b2") == 2
    cli = [*world.cli_args(), "incident", "suspend", "--users", world.username("b2"), *WHY,
           "--journal-copy", str(world.journal_copy)]

    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "2 web-service token(s) belong to 1 of these user(s)" in out and "--revoke-tokens" in out
    assert main([*cli, "--revoke-tokens"]) == 0
    out = capsys.readouterr().out
    assert "will be REVOKED: this cannot be undone" in out and "IRREVERSIBLE" in out and "dry run" in out
    assert _tokens(world, "b2") == 2

    assert main([*cli, "--revoke-tokens", "--apply"]) == 0
    capsys.readouterr()
    assert _tokens(world, "b2") == 0
    inc = world.runbook().journal.incidents()
    mine = next(i for i in reversed(list(inc.values())) if i.action == "suspend" and i.state == "open")
    tok = next(e for e in mine.entries if e["kind"] == "ws_tokens")
    assert tok["irreversible"] and tok["before"] == {"count": 2}
    assert mine.results[("ws_tokens", world.ids["b2"])]["status"] == "changed"

    assert main([*world.cli_args(), "incident", "reinstate", mine.id, "--apply",
                 "--journal-copy", str(world.journal_copy)]) == 0
    out = capsys.readouterr().out
    assert "2 web-service token(s) revoked by" in out and "cannot be restored" in out
    assert world.users_state()["b2"]["suspended"] == 0 and _tokens(world, "b2") == 0
