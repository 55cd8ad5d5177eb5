"""One school membership for every reader: for each method of platform.yml
school_membership, the storage exporter, billing and incidents find the same
users of the same school in the real local Moodle (moodleops.membership).

The world is built through Moodle's API so that the three methods disagree on
purpose (a user's cohort, school profile field and enrolments point at
different schools): a reader that ignored the method, or kept its own copy of
one, would find other users."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from moodleops.capacity import billing
from moodleops.exporters.storage_config import config_from_inventory
from moodleops.exporters.storage_model import StoragePaths
from moodleops.exporters.storage_scan import scan

from moodleops import REPO_ROOT
from moodleops.incident.helper import IncidentHelper
from moodleops.inventory import Inventory, load_inventory
from moodleops.membership import METHODS
from moodleops.moodle import MoodleCLI
from moodleops.site import Site, site_of

pytestmark = pytest.mark.stack

FIXTURE = Path(__file__).resolve().parent / "membership_fixture.php"
INCIDENT_HELPER = REPO_ROOT / "moodleops" / "php" / "incident.php"   # this checkout's, not the installed one
# Stable test-only profile fields, kept between runs (see the fixture).
SCHOOL_FIELD = "moodleopstestschool"
TYPE_FIELD = "moodleopstestacctype"


@dataclass(frozen=True)
class World:
    root: Path                         # an inventory copy whose schools are the test schools
    a: str
    b: str
    ids: dict[str, int]                # role -> Moodle user id
    expected: dict[str, dict[str, set[int]]]   # method -> school -> user ids
    suspended: set[int]

    def inventory(self, method: str) -> Inventory:
        path = self.root / "platform.yml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["school_membership"] = {"method": method, "profile_field": SCHOOL_FIELD}
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return load_inventory(str(self.root / "local"))


@pytest.fixture(scope="module")
def world(moodle: MoodleCLI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    a, b = f"mbr{tag}a", f"mbr{tag}b"
    idn = {a: f"MBR-{tag}-A", b: f"MBR-{tag}-B"}
    course = {a: f"mbr{tag}coursea", b: f"mbr{tag}courseb"}
    # role: cohorts, school profile field, enrolments (school, active), account suspended
    plan = {
        "u1": ([a], a, [(b, True)], False),
        "u2": ([a], b, [(a, True)], False),
        "u3": ([b], a, [(a, False)], False),   # a suspended enrolment: not a member by enrolments
        "u4": ([a], a, [(a, True)], True),     # a suspended account is still a member
        "u5": ([], None, [], False),           # nobody's
    }
    usernames = {r: f"mbr{tag}{r}" for r in plan}
    payload = {
        "action": "create", "field": SCHOOL_FIELD, "type_field": TYPE_FIELD,
        "schools": [{"name": f"Membership test {c[-1].upper()} {tag}", "category_idnumber": idn[c],
                     "cohort_idnumber": idn[c], "course": course[c]} for c in (a, b)],
        "users": [{"username": usernames[r], "suspended": susp, "type": "student",
                   "cohorts": [idn[c] for c in cohorts], "enrolments": [{"course": course[c], "active": act}
                                                                         for c, act in enrol],
                   **({"school_field": field} if field else {})}
                  for r, (cohorts, field, enrol, susp) in plan.items()],
    }
    cleanup = {"action": "cleanup", "usernames": list(usernames.values()), "cohorts": list(idn.values()),
               "categories": list(idn.values())}
    root = tmp_path_factory.mktemp("membership") / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns("production", "vault.yml"))
    schools = [{"code": c, "name": f"Membership test {c[-1].upper()} {tag}", "category_idnumber": idn[c],
                "cohort_idnumber": idn[c], "students": 3, "trainers": 0,
                "referents": [f"ref-{c}@example.invalid"]} for c in (a, b)]
    (root / "schools.yml").write_text(yaml.safe_dump({"schools": schools}, sort_keys=False), encoding="utf-8")
    platform = yaml.safe_load((root / "platform.yml").read_text(encoding="utf-8"))
    platform["accounts"]["account_type_field"] = TYPE_FIELD
    (root / "platform.yml").write_text(yaml.safe_dump(platform, sort_keys=False), encoding="utf-8")
    try:
        ids = moodle.tool(str(FIXTURE), payload=payload, timeout=300)["users"]
        by_role = {r: int(ids[usernames[r]]) for r in plan}
        u = by_role
        expected = {
            "cohort": {a: {u["u1"], u["u2"], u["u4"]}, b: {u["u3"]}},
            "profile_field": {a: {u["u1"], u["u3"], u["u4"]}, b: {u["u2"]}},
            "category_enrolments": {a: {u["u2"], u["u4"]}, b: {u["u1"]}},
        }
        yield World(root, a, b, by_role, expected, {u["u4"]})
    finally:
        moodle.tool(str(FIXTURE), payload=cleanup, timeout=300)


def _billing(inv: Inventory, site: Site) -> dict[str, set[int]]:
    snap = billing.collect(inv, site)
    return {s.code: {m.userid for m in snap.memberships if m.school == s.code} for s in inv.schools}


def _incidents(inv: Inventory, site: Site) -> dict[str, set[int]]:
    snap = IncidentHelper(MoodleCLI(site), inv, script=str(INCIDENT_HELPER)).read(expand=inv.schools)
    assert snap.school_problems == {}
    return {s.code: {u.id for u in snap.users if s.code in u.schools} for s in inv.schools}


@pytest.mark.parametrize("method", METHODS)
def test_exporter_billing_and_incidents_find_the_same_members(world: World, site: Site, method: str) -> None:
    inv = world.inventory(method)
    expected = world.expected[method]
    assert _billing(inv, site_of(inv)) == expected
    assert _incidents(inv, site_of(inv)) == expected
    # The exporter reports counts per school: the same members, split active / suspended.
    cfg, _ = config_from_inventory(inv, site_of(inv), paths=StoragePaths.defaults(site.dataroot),
                                   walk_filedir=False)
    accounts = scan(cfg).accounts
    for code, members in expected.items():
        got = accounts[code]
        assert (got.active, got.suspended) == (len(members - world.suspended), len(members & world.suspended)), code


def test_the_methods_really_differ_in_this_world(world: World) -> None:
    # Otherwise the test above could not tell a reader that ignores the method.
    assert len({frozenset(frozenset(v) for v in e.values()) for e in world.expected.values()}) == len(METHODS)
