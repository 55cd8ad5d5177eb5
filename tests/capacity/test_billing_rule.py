"""The counting rule, offline, on recorded snapshots (no Moodle needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from capacity_conftest_helpers import run_cli
from moodleops.capacity import billing
from moodleops.capacity.errors import CapacityError

from moodleops.inventory import Inventory

TZ = "Europe/Paris"


def _snap(rows: list[tuple[int, str, str, int, bool, str]]) -> billing.Snapshot:
    return billing.Snapshot(int(datetime(2025, 7, 16, tzinfo=UTC).timestamp()), "test", "cohort", "ut_accounttype",
                            tuple(billing.Membership(*r) for r in rows))


def at(y: int, m: int, d: int, hh: int = 12) -> int:
    return int(datetime(y, m, d, hh, tzinfo=UTC).timestamp())


def test_rule_on_a_recorded_snapshot(local_inventory: Inventory) -> None:
    snap = _snap([
        (1, "abc1234a", "ifsi_millau", at(2024, 9, 10), False, "student"),
        (2, "abc1234b", "ifsi_millau", at(2024, 9, 10), False, "student"),
        (2, "abc1234b", "ifms_lot", at(2024, 9, 5), False, "student"),      # lot joined first: billed to lot
        (3, "abc1234c", "ifms_lot", at(2024, 9, 10), True, "student"),      # suspended
        (4, "abc1234d", "ifms_lot", at(2025, 7, 15, 21), False, "student"),  # 23:00 Paris on 15 July: counts
        (5, "abc1234e", "ifms_lot", at(2025, 7, 15, 22), False, "student"),  # 00:00 Paris on 16 July: too late
        (6, "abc1234f", "ifms_lot", at(2024, 9, 10), False, "trainer"),
        (7, "abc1234g", "ifms_lot", at(2024, 9, 10), False, ""),
        (8, "abc1234h", "gone_school", at(2024, 9, 10), False, "student"),  # no longer in the inventory
    ])
    b = billing.count(local_inventory, snap, 2025, TZ)
    millau = next(s for s in b.schools if s.code == "ifsi_millau")
    lot = next(s for s in b.schools if s.code == "ifms_lot")
    assert (millau.billed, millau.billed_elsewhere) == (1, 1)
    assert (lot.billed, lot.shared_billed_here, lot.suspended, lot.after_cutoff, lot.not_student, lot.no_type) == (
        2, 1, 1, 1, 1, 1)
    assert b.total_students == 3
    assert b.amount(3) == Decimal("66.00")
    assert [(s.username, s.schools, s.billed_to) for s in b.shared] == [
        ("abc1234b", ("ifms_lot", "ifsi_millau"), "ifms_lot")]
    text = billing.to_text(b)
    assert "due to the Région by 2025-07-15" in text and "abc1234b: ifms_lot, ifsi_millau -> billed to ifms_lot" in text
    assert "counts once" in text and "ut_accounttype" in text
    rows = billing.to_csv(b).splitlines()
    assert rows[0].startswith("year,school,name,students,rate_eur,amount_eur")
    assert rows[-1].startswith("2025,TOTAL,all schools,3,22,66.00")


def test_ties_go_to_inventory_order(local_inventory: Inventory) -> None:
    same = at(2024, 9, 10)
    snap = _snap([(1, "x", "ifms_lot", same, False, "student"), (1, "x", "ifsi_millau", same, False, "student")])
    b = billing.count(local_inventory, snap, 2025, TZ)
    assert b.shared[0].billed_to == "ifsi_millau"   # first in schools.yml


@pytest.mark.parametrize("year", [2024, 2030])
def test_a_year_outside_the_agreement_is_refused(local_inventory: Inventory, year: int) -> None:
    with pytest.raises(CapacityError, match=rf"year {year}: campaign end {year}-07-15 is outside the agreement "
                                            r"\(2024-09-01 to 2029-08-31\); billing years are 2025 to 2029"):
        billing.campaign_cutoff(local_inventory, year, TZ)


def test_cli_bad_snapshot_and_bad_year(tmp_path: Path) -> None:
    bad = tmp_path / "snap.json"
    bad.write_text('{"schema": "other"}')
    code, out, err = run_cli("capacity", "billing", "--year", "2025", "--snapshot", str(bad))
    assert code == 2 and "schema 'other' is not valid (moodleops.billing-snapshot/1" in err and out == ""
    code, out, err = run_cli("capacity", "billing", "--year", "2031", "--snapshot", str(bad), "--out",
                             str(tmp_path / "o"))
    assert code == 2 and "outside the agreement" in err and not (tmp_path / "o").exists()


def test_snapshot_round_trip(local_inventory: Inventory, tmp_path: Path) -> None:
    snap = _snap([(1, "abc1234a", "ifsi_millau", at(2024, 9, 10), False, "student")])
    path = tmp_path / "s.json"
    path.write_text(snap.to_json())
    assert billing.Snapshot.read(path) == snap
