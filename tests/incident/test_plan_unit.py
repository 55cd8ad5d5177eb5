"""Pure rules, no stack: expiry window, missing accounts, journal bookkeeping."""

from __future__ import annotations

from datetime import date

import pytest

from moodleops.incident.csvinput import RenewalRow, parse_renewals_option, parse_user_list
from moodleops.incident.errors import IncidentError
from moodleops.incident.journal import Journal, new_incident_id, verify_file
from moodleops.incident.plan import expiry_window, missing_accounts, plan_reinstate
from moodleops.inventory import load_inventory


def test_expiry_window_follows_platform_yml() -> None:
    rules = load_inventory("local").platform.accounts
    assert expiry_window(date(2027, 9, 2), rules) == (date(2027, 8, 31), date(2026, 8, 31))
    with pytest.raises(IncidentError, match="before 2027-08-31"):
        expiry_window(date(2027, 8, 30), rules)


def test_missing_accounts_sla() -> None:
    rows = [RenewalRow("s", "old", date(2026, 6, 1), "", "f:2"), RenewalRow("s", "new", date(2026, 6, 20), "", "f:3"),
            RenewalRow("s", "here", date(2026, 5, 1), "", "f:4")]
    late, within = missing_accounts(rows, {"here"}, day=date(2026, 6, 25), sla_days=15)
    assert [m.username for m in late] == ["old"] and late[0].days == 24 and within == 1


def test_user_list_and_renewals_option() -> None:
    assert parse_user_list("a, b,a") == ["a", "b"]
    with pytest.raises(IncidentError, match="empty name"):
        parse_user_list("a,,b")
    with pytest.raises(IncidentError, match="SCHOOL=FILE"):
        parse_renewals_option(["x.csv"], {"s"})


def _user(uid: int, op: str = "change", **kw) -> dict:
    e = {"kind": "user_suspended", "id": uid, "label": f"u{uid}", "op": op, "to": {"suspended": 1},
         "expect": {}, "before": {"suspended": 0, "timemodified": 1}, "origin": {"suspended": 0, "timemodified": 1}}
    return {**e, **kw}


def _journal_run(j: Journal, inc: str, action: str, entries: list[dict], statuses: dict[int, str],
                 reinstates: str | None = None, outcome: str = "done") -> None:
    j.append({"type": "intent", "incident": inc, "action": action, "reinstates": reinstates, "at": "t",
              "scope": {"n": inc}, "entries": entries})
    results = [{"kind": e["kind"], "id": e["id"], "status": statuses.get(e["id"], "changed"),
                "before": e["before"], "after": {"suspended": 1 - e["before"]["suspended"], "timemodified": 2}}
               for e in entries if e["op"] in ("change", "restore")]
    if results:
        j.append({"type": "chunk", "incident": inc, "phase": "apply", "seq": 1, "of": 1, "results": results})
    j.append({"type": "close", "incident": inc, "outcome": outcome})


def test_journal_pending_states_and_holds(tmp_path) -> None:
    j = Journal(tmp_path / "host", tmp_path / "copy", "local")
    inc = new_incident_id()
    assert inc.startswith("INC-") and len(inc.split("-")) == 4
    _journal_run(j, inc, "suspend", [_user(7), _user(8)], {})
    plan = plan_reinstate(j.incident(inc), j.holds())
    assert [(c.id, c.op, c.to, c.expect) for c in plan.changes] == [
        (8, "restore", {"suspended": 0}, {"suspended": 1, "timemodified": 2}),
        (7, "restore", {"suspended": 0}, {"suspended": 1, "timemodified": 2})]
    # A second incident joins the hold on 7: reinstating the first leaves 7 suspended, names the holder.
    _journal_run(j, "INC-b", "suspend", [_user(7, op="hold", before={"suspended": 1, "timemodified": 2})], {})
    plan = plan_reinstate(j.incident(inc), j.holds(), incidents=j.incidents())
    assert {c.id: c.op for c in plan.changes} == {8: "restore", 7: "release"}
    assert any("INC-b" in n and "u7" in n for n in plan.notes)
    # First reinstatement: 8 drifted -> partly reinstated, 8 still pending; 7 released.
    entries = [c.entry() for c in plan.changes]
    _journal_run(j, "INC-r1", "reinstate", entries, {8: "drift"}, reinstates=inc)
    assert j.incidents()[inc].state == "partly-reinstated"
    assert [c.id for c in plan_reinstate(j.incident(inc), j.holds()).changes] == [8]
    # INC-b is now the last holder of 7: its reinstatement restores 7 to the state before any incident.
    back = plan_reinstate(j.incident("INC-b"), j.holds())
    assert [(c.id, c.op, c.to) for c in back.changes] == [(7, "restore", {"suspended": 0})]
    _journal_run(j, "INC-r2", "reinstate", [c.entry() for c in plan_reinstate(j.incident(inc), j.holds()).changes],
                 {}, reinstates=inc)
    assert j.incidents()[inc].state == "reinstated"
    with pytest.raises(IncidentError, match="already reinstated by INC-r2"):
        plan_reinstate(j.incident(inc), j.holds())
    with pytest.raises(IncidentError, match="itself a reinstatement"):
        plan_reinstate(j.incident("INC-r1"), j.holds())
    assert (tmp_path / "copy" / "incidents-local.jsonl").read_text() == j.path.read_text()


def test_incomplete_incident_and_hash_chain(tmp_path) -> None:
    j = Journal(tmp_path / "host", None, "local")
    j.append({"type": "intent", "incident": "INC-x", "action": "suspend", "at": "t", "entries": [_user(1)]})
    assert [i.id for i in j.incomplete()] == ["INC-x"] and j.incidents()["INC-x"].state == "INCOMPLETE"
    j.append({"type": "close", "incident": "INC-x", "outcome": "done"})
    assert not j.incomplete()
    assert not verify_file(j.path).problems
    lines = j.path.read_text().splitlines()
    lines[0] = lines[0].replace('"action": "suspend"', '"action": "suspenD"')
    j.path.write_text("\n".join(lines) + "\n")
    problems = verify_file(j.path).problems
    assert ":1:" in problems[0] and "altered" in problems[0]
    # Dropping a line breaks the chain of the next one.
    j.path.write_text("\n".join([lines[1]]) + "\n")
    assert any("chain is broken" in p for p in verify_file(j.path).problems)


def test_short_writes_are_completed_and_a_stuck_write_fails(tmp_path, monkeypatch) -> None:
    import os

    from moodleops.incident.errors import JournalError
    real_write = os.write
    calls = []

    def short(fd, data):   # the kernel may write less than asked: the rest must follow
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))
    monkeypatch.setattr(os, "write", short)
    j = Journal(tmp_path / "host", tmp_path / "copy", "local")
    j.append({"type": "close", "incident": "INC-s", "outcome": "done"})
    assert len(calls) > 2 and not verify_file(j.path).problems
    assert j.path.read_bytes() == (tmp_path / "copy" / "incidents-local.jsonl").read_bytes()
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    with pytest.raises(JournalError, match="short write"):
        j.append({"type": "close", "incident": "INC-t", "outcome": "done"})
