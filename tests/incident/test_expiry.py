"""Account expiry on 31 August and the missing-accounts report."""

from __future__ import annotations

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import Who

pytestmark = pytest.mark.stack

WHO = Who(reason="test: yearly expiry", ticket="TEST-E", operator="pytest")


def test_expiry_suspends_exactly_the_hosted_accounts_not_renewed(world, tmp_path, capsys) -> None:
    csv_a = tmp_path / "renewals_a.csv"
    u = world.username
    csv_a.write_text("username,requested,account_type\n"
                     f"{u('e1')},2030-06-10,trainer\n"
                     f"{u('a1')},2030-06-11,trainer\n"
                     f"{u('ab')},2030-06-11,trainer\n"
                     f"{u('zz')},2030-06-01,trainer\n"          # requested, never created
                     f"{u('zy')},2030-06-28,referent\n"         # requested, within the SLA
                     f"{u('e2')},2029-06-10,referent\n")        # last year's list: does not count
    args = [*world.cli_args(), "incident", "expire", "--date", "2030-08-31",
            "--renewals", f"{world.codes['a']}={csv_a}", "--reason", "yearly", "--ticket", "TEST-E",
            "--journal-copy", str(world.journal_copy)]
    before = world.users_state()
    assert main(args) == 0
    dry = capsys.readouterr().out
    assert "dry run" in dry and "not counted" in dry and u("zz") in dry
    assert world.users_state() == before

    rb = world.runbook()
    renewals = rb.read_renewals({world.codes["a"]: csv_a})
    from datetime import date
    out = rb.run(rb.expire(date(2030, 8, 31), renewals), apply=True, who=WHO)
    after = world.users_state()
    newly = {k for k in after if after[k]["suspended"] and not before[k]["suspended"]}
    # a4 (referent of A) and e2 (referent, renewed only last year) expire; a3 was already suspended;
    # students (a2, e3), renewed (a1, e1, ab) and school B (b1, e4) are untouched.
    assert newly == {"a4", "e2"}
    assert {c.label for c in out.plan.changes} == {u("a4"), u("e2")}

    # missing-accounts on 1 July 2030: zz (30 days) is late, zy (3 days) is within the 15-day SLA.
    assert main([*world.cli_args(), "incident", "missing-accounts", "--date", "2030-07-01",
                 "--renewals", f"{world.codes['a']}={csv_a}", "--journal-copy", str(world.journal_copy)]) == 1
    report = capsys.readouterr().out
    assert u("zz") in report and u("zy") not in report.split("more missing")[0] and "1 more missing" in report

    back = rb.run(rb.reinstate(out.incident), apply=True, who=WHO)
    assert back.count("changed") == 2
    assert {k: v["suspended"] for k, v in world.users_state().items()} == \
        {k: v["suspended"] for k, v in before.items()}


def test_expiry_refuses_a_date_before_31_august(world, tmp_path, capsys) -> None:
    csv_a = tmp_path / "r.csv"
    csv_a.write_text(f"username,requested\n{world.username('e1')},2030-06-10\n")
    assert main([*world.cli_args(), "incident", "expire", "--date", "2030-07-15",
                 "--renewals", f"{world.codes['a']}={csv_a}", "--reason", "x", "--ticket", "T"]) == 2
    err = capsys.readouterr().err
    assert "2030-07-15" in err and "hosted_expiry" in err
