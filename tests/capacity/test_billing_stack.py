"""The billing count against the real local Moodle, with accounts, a profile
field and cohort memberships made through Moodle (billing_fixture.php)."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from capacity_conftest_helpers import run_cli
from moodleops.capacity import billing

from moodleops.site import site_of

pytestmark = pytest.mark.stack

# The fixture users exist from now on: count for a campaign that ends after
# today, within the agreement (the count is then marked provisional).
YEAR = 2027


def test_live_count_applies_the_rule(billing_world, params) -> None:
    inv = billing_world.inv
    snap = billing.collect(inv, site_of(inv))
    result = billing.count(inv, snap, YEAR, params.billing.timezone)
    a, b, c = (next(s for s in result.schools if s.code == code) for code in billing_world.codes)
    # a: a1, a2 and the two-school student (joined a first, ties go to inventory order: a).
    assert (a.billed, a.shared_billed_here, a.not_student) == (3, 1, 1)
    # b: b1 only; the two-school student is billed to a, the suspended one to nobody.
    assert (b.billed, b.billed_elsewhere, b.suspended) == (1, 1, 1)
    # c: 'Student' counts; the account without a type does not, and is reported.
    assert (c.billed, c.no_type) == (1, 1)
    assert result.total_students == 5
    assert result.amount(result.total_students) == Decimal(22) * 5 == inv.platform.rate_eur_per_student * 5
    assert [(s.username, s.billed_to) for s in result.shared] == [(billing_world.usernames["ab"], a.code)]


def test_cli_writes_csv_and_reproduces_from_snapshot(billing_world, tmp_path: Path) -> None:
    env = str(billing_world.inv.env_dir)
    live_dir, offline_dir = tmp_path / "live", tmp_path / "offline"
    snap = tmp_path / "snapshot.json"
    code, out, err = run_cli("-i", env, "capacity", "billing", "--year", str(YEAR), "--out", str(live_dir),
                             "--save-snapshot", str(snap))
    assert code == 1, err            # 1: there is a student in two schools and an account without a type
    assert "PROVISIONAL" in out and billing_world.usernames["ab"] in out
    rows = list(csv.DictReader(io.StringIO((live_dir / f"billing-{YEAR}.csv").read_text())))
    by_school = {r["school"]: r for r in rows}
    assert by_school["TOTAL"]["students"] == "5" and by_school["TOTAL"]["amount_eur"] == "110.00"
    assert by_school[billing_world.codes[1]]["suspended_not_billed"] == "1"
    shared = (live_dir / f"billing-{YEAR}-shared.csv").read_text()
    assert billing_world.usernames["ab"] in shared
    # Offline, from the snapshot: the very same files.
    code2, _, err2 = run_cli("-i", env, "capacity", "billing", "--year", str(YEAR), "--out", str(offline_dir),
                             "--snapshot", str(snap))
    assert code2 == 1, err2
    for name in (f"billing-{YEAR}.csv", f"billing-{YEAR}-shared.csv"):
        assert (offline_dir / name).read_text() == (live_dir / name).read_text()
    doc = json.loads(snap.read_text())
    assert doc["schema"] == billing.SNAPSHOT_SCHEMA and doc["account_type_field"]


@pytest.mark.parametrize("method", ["profile_field", "category_enrolments"])
def test_other_membership_methods_query_the_real_schema(billing_world, make_inventory, method: str) -> None:
    """The test users are in cohorts only: by enrolments or by a school profile
    field they belong to no test school, and the queries run on Moodle's schema."""
    schools = [{"code": s.code, "name": s.name, "category_idnumber": s.category_idnumber,
                "cohort_idnumber": s.cohort_idnumber, "students": 1, "trainers": 1,
                "referents": list(s.referents)} for s in billing_world.inv.schools]
    inv = make_inventory(schools, {"school_membership.method": method,
                                   "accounts.account_type_field": billing_world.inv.platform.accounts.account_type_field})
    snap = billing.collect(inv, site_of(inv))
    assert snap.membership_method == method and snap.memberships == ()
