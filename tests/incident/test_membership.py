"""School membership methods other than cohort (platform.yml school_membership)."""

from __future__ import annotations

import dataclasses

import pytest

from moodleops.incident.errors import IncidentError
from moodleops.incident.runbook import Runbook

pytestmark = pytest.mark.stack


def _with_method(world, method: str) -> Runbook:
    platform = dataclasses.replace(world.inv.platform, membership_method=method)
    return Runbook(dataclasses.replace(world.inv, platform=platform), world.site, journal_copy=None)


def test_category_enrolments_membership(world) -> None:
    # Every test user is enrolled in the one course of school A's category, none in B's.
    rb = _with_method(world, "category_enrolments")
    out = rb.run(rb.suspend(schools=(world.codes["a"],)), apply=False, who=None)
    seen = {c.label for c in out.plan.changes} | {s.label for s in out.plan.skipped}
    assert seen == {world.username(s) for s in world.ids}
    assert world.username("a3") in {s.label for s in out.plan.skipped}


def test_profile_field_membership_needs_the_field(world) -> None:
    rb = _with_method(world, "profile_field")
    field = world.inv.platform.membership_profile_field
    assert field, "platform.yml school_membership.profile_field is set"
    try:
        out = rb.run(rb.suspend(schools=(world.codes["a"],)), apply=False, who=None)
    except IncidentError as exc:
        assert f"no custom profile field {field}" in str(exc)
    else:
        # The site has the field: nobody of ours holds our test school's code in it.
        assert out.plan.changes == []
