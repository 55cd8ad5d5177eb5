"""Pure rules, no stack: expiry window, missing accounts, journal bookkeeping."""

from __future__ import annotations

from datetime import date

import pytest

from moodleops.incident.csvinput import RenewalRow, parse_renewals_option, parse_user_list
from moodleops.incident.errors import IncidentError
from moodleops.incident.journal import Journal, new_incident_id
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


def test_journal_pending_and_states(tmp_path) -> None:
    j = Journal(tmp_path / "host", tmp_path / "copy", "local")
    inc = new_incident_id()
    assert inc.startswith("INC-") and len(inc.split("-")) == 4
    change = {"kind": "user_suspended", "id": 7, "label": "u7", "status": "changed",
              "before": {"suspended": 0, "timemodified": 1}, "after": {"suspended": 1, "timemodified": 2}}
    j.append({"incident": inc, "action": "suspend", "changes": [change, {**change, "id": 8, "label": "u8"}]})
    plan = plan_reinstate(j.incident(inc))
    assert [(c.id, c.to, c.expect) for c in plan.changes] == [
        (8, {"suspended": 0}, {"suspended": 1, "timemodified": 2}),
        (7, {"suspended": 0}, {"suspended": 1, "timemodified": 2})]
    # First reinstatement: 7 restored, 8 drifted -> partly reinstated, only 8 pending.
    j.append({"incident": "INC-r1", "action": "reinstate", "reinstates": inc, "at": "t",
              "changes": [{**change, "status": "changed"}, {**change, "id": 8, "status": "drift"}]})
    assert j.incidents()[inc].state == "partly-reinstated"
    assert [c.id for c in plan_reinstate(j.incident(inc)).changes] == [8]
    j.append({"incident": "INC-r2", "action": "reinstate", "reinstates": inc, "at": "t2",
              "changes": [{**change, "id": 8, "status": "changed"}]})
    assert j.incidents()[inc].state == "reinstated"
    with pytest.raises(IncidentError, match="already reinstated by INC-r2"):
        plan_reinstate(j.incident(inc))
    with pytest.raises(IncidentError, match="itself a reinstatement"):
        plan_reinstate(j.incident("INC-r1"))
    assert (tmp_path / "copy" / "incidents-local.jsonl").read_text() == j.path.read_text()
