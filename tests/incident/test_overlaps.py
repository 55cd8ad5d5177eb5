"""Holds, not flags: incidents overlapping on the same objects, reinstated in
every order, end at the pre-incident state, and a reinstatement never
reactivates an object another open incident still holds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from itertools import permutations
from typing import Any

import pytest

from moodleops.cli import main
from moodleops.incident.runbook import Runbook, Who

pytestmark = pytest.mark.stack

WHO = Who(reason="test: overlapping incidents", ticket="TEST-O", operator="pytest")
Make = Callable[[Runbook], Any]


def _state(world) -> dict[str, tuple[int, bool]]:
    return {k: (v["suspended"], v["messaging_blocked"]) for k, v in world.users_state().items()}


def _overlap(world, first: Make, second: Make, shared: set[str], *,
             extra: Callable[[], Any] | None = None) -> None:
    """Apply `first` then `second` (both touching the users `shared`), then reinstate
    them in both orders (re-applying in between): after the first reinstatement
    the shared users are still held; after both, everything is as before."""
    before = _state(world)
    for order in permutations((0, 1)):
        rb = world.runbook()
        ids = [rb.run(first(rb), apply=True, who=WHO).incident, rb.run(second(rb), apply=True, who=WHO).incident]
        assert all(ids), ids
        during = _state(world)
        assert all(during[s] != before[s] for s in shared), "both incidents hold the shared users"
        back = rb.run(rb.reinstate(ids[order[0]]), apply=True, who=WHO)
        still = ids[order[1]]
        assert any(still in n for n in back.plan.notes), back.plan.notes
        assert {c.label for c in back.plan.changes if c.op == "release"} >= {world.username(s) for s in shared}
        mid = _state(world)
        for s in shared:
            assert mid[s] == during[s], f"{s} reactivated while {still} still holds it"
        rb.run(rb.reinstate(still), apply=True, who=WHO)
        assert _state(world) == before, f"order {order}"
        if extra:
            extra()


def test_user_list_inside_a_suspended_school(world) -> None:
    u = world.username
    _overlap(world, lambda rb: rb.suspend(schools=(world.codes["a"],)),
             lambda rb: rb.suspend(users=(u("a1"), u("a2"), u("b1"))), {"a1", "a2"})


def test_expiry_during_a_school_suspension(world, tmp_path) -> None:
    csv_a = tmp_path / "renewals.csv"
    csv_a.write_text(f"username,requested\n{world.username('e1')},2030-06-10\n{world.username('a1')},2030-06-10\n")

    def expire(rb: Runbook) -> Any:
        return rb.expire(date(2030, 8, 31), rb.read_renewals({world.codes["a"]: csv_a}))
    # a4 and e2 (hosted, not renewed) are both suspended by the school incident and expired.
    _overlap(world, lambda rb: rb.suspend(schools=(world.codes["a"],)), expire, {"a4", "e2"})


def test_two_messaging_suspensions_of_one_user(world) -> None:
    u = world.username
    _overlap(world, lambda rb: rb.messaging((u("m1"),), block=True),
             lambda rb: rb.messaging((u("m1"), u("b2")), block=True), {"m1"})


def test_pre_existing_suspension_never_touched_by_holds(world) -> None:
    # a3 was suspended before any incident: not held, not reactivated by any order.
    rb = world.runbook()
    out = rb.run(rb.suspend(users=(world.username("a3"), world.username("b2"))), apply=True, who=WHO)
    assert "before any open incident" in {s.label: s.why for s in out.plan.skipped}[world.username("a3")]
    rb.run(rb.reinstate(out.incident), apply=True, who=WHO)
    assert _state(world)["a3"][0] == 1


def test_school_inside_a_platform_suspension_both_maintenance_modes(world, capsys) -> None:
    """Real maintenance on the shared stack: kept short, and always put back."""
    rb = world.runbook()
    helper = rb.helper
    start = helper.read().platform
    assert not start["cli_maintenance"], "the stack is already in CLI maintenance: cannot test"
    users_before = _state(world)
    # The web switch is on too beforehand (as an admin may have set it): recorded and restored exactly.
    world.moodle.run("admin/cli/cfg.php", "--name=maintenance_enabled", "--set=1")
    web = 1
    try:
        for order in permutations((0, 1)):
            p = rb.run(rb.suspend(platform=True, message="Test maintenance"), apply=True, who=WHO).incident
            s = rb.run(rb.suspend(schools=(world.codes["b"],)), apply=True, who=WHO).incident
            p2 = rb.run(rb.suspend(platform=True), apply=True, who=WHO)   # a second platform incident joins
            assert [c.op for c in p2.plan.changes] == ["hold"]
            assert helper.read().platform["cli_maintenance"]
            # Maintenance off, upgrades and restores refuse while a platform incident is open.
            assert main([*world.cli_args(), "platform", "maintenance", "off"]) != 0
            assert p in capsys.readouterr().err
            ids = [p, s]
            rb.run(rb.reinstate(ids[order[0]]), apply=True, who=WHO)
            rb.run(rb.reinstate(p2.incident), apply=True, who=WHO) if order[0] == 0 else None
            if order[0] == 0:   # both platform incidents gone: maintenance off, school B still suspended
                assert not helper.read().platform["cli_maintenance"]
                assert _state(world)["b1"][0] == 1
                rb.run(rb.reinstate(s), apply=True, who=WHO)
            else:               # school back, platform still held by p and p2
                assert helper.read().platform["cli_maintenance"]
                rb.run(rb.reinstate(p), apply=True, who=WHO)
                assert helper.read().platform["cli_maintenance"], "p2 still holds the platform"
                rb.run(rb.reinstate(p2.incident), apply=True, who=WHO)
            now = helper.read().platform
            assert not now["cli_maintenance"] and int(now["maintenance_enabled"]) == web
            assert now["maintenance_message"] == start["maintenance_message"]
            assert _state(world) == users_before
    finally:
        try:
            for inc in world.runbook().journal.incidents().values():
                if any(e["kind"] == "platform_maintenance" for e in inc.pending()):
                    rb.run(rb.reinstate(inc.id), apply=True, who=WHO, force=True)
        finally:
            # Whatever happened above, the shared stack leaves maintenance, through Moodle's own CLI.
            world.moodle.run("admin/cli/maintenance.php", "--disable")
            world.moodle.run("admin/cli/cfg.php", "--name=maintenance_enabled",
                             f"--set={int(start['maintenance_enabled'])}")
            msg = start["maintenance_message"]
            world.moodle.run("admin/cli/cfg.php", "--name=maintenance_message",
                             *([f"--set={msg}"] if msg else ["--unset"]))
