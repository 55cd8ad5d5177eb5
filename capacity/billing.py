"""The yearly billing count: enrolled students per school at the end of the
enrolment campaign, x the rate per student (docs/capacity.md, "Counting rule").

Two steps, so that the count is reproducible: `collect` reads, once, every
membership of a school's users from Moodle into a Snapshot (a JSON file can
hold it); `count` applies the rule to a Snapshot, the same way live or offline.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from moodleops.capacity.errors import CapacityError, read_schema_doc

from moodleops import membership, moodledb
from moodleops.inventory import Inventory
from moodleops.site import Site

SNAPSHOT_SCHEMA = "moodleops.billing-snapshot/1"


@dataclass(frozen=True)
class Membership:
    """One user's attachment to one school, as Moodle holds it."""

    userid: int
    username: str
    school: str
    since: int            # epoch seconds the user joined the school (cohort timeadded...)
    suspended: bool       # suspended flag, or auth 'nologin' (login disabled)
    account_type: str     # value of the account-type profile field, '' if unset


@dataclass(frozen=True)
class Snapshot:
    taken_at: int
    source: str                     # database it was read from, for the record
    membership_method: str
    account_type_field: str
    memberships: tuple[Membership, ...]

    def to_json(self) -> str:
        doc = {"schema": SNAPSHOT_SCHEMA, **asdict(self)}
        return json.dumps(doc, indent=1, ensure_ascii=False)

    @staticmethod
    def read(path: Path) -> Snapshot:
        doc = read_schema_doc(path, SNAPSHOT_SCHEMA, "billing snapshot", "capacity billing --save-snapshot")
        try:
            members = tuple(Membership(**m) for m in doc["memberships"])
            return Snapshot(int(doc["taken_at"]), str(doc["source"]), str(doc["membership_method"]),
                            str(doc["account_type_field"]), members)
        except (KeyError, TypeError) as exc:
            raise CapacityError(f"{path}: a field is missing or malformed ({exc})") from None


# -- collecting from Moodle ----------------------------------------------------

_BASE = """
  SELECT u.id AS userid, u.username, (u.suspended = 1 OR u.auth = 'nologin') AS suspended,
         COALESCE((SELECT d.data FROM {user_info_data} d JOIN {user_info_field} f ON f.id = d.fieldid
                    WHERE d.userid = u.id AND f.shortname = %(type_field)s), '') AS account_type,
         m.school, m.since
    FROM ({members}) m JOIN {user} u ON u.id = m.userid
   WHERE u.deleted = 0
   ORDER BY m.school, u.id
"""

def collect(inv: Inventory, site: Site) -> Snapshot:
    """Every membership of a school of the inventory, read in one consistent snapshot."""
    p = inv.platform
    method = p.membership_method
    members, params = membership.members_sql(membership.rule_of(p), inv.schools)
    text = _BASE.replace("{members}", members)
    with moodledb.connect(moodledb.target_of(site), application="moodleops-billing") as conn:
        taken = int(datetime.now(UTC).timestamp())
        found = moodledb.rows(conn, site.db_prefix, text, {**params, "type_field": p.accounts.account_type_field})
    members = tuple(Membership(int(r["userid"]), str(r["username"]), str(r["school"]), int(r["since"]),
                               bool(r["suspended"]), str(r["account_type"]).strip()) for r in found)
    return Snapshot(taken, f"{site.db_name}@{site.db_host}:{site.db_port}", method,
                    p.accounts.account_type_field, members)


# -- the counting rule -----------------------------------------------------------

@dataclass
class SchoolCount:
    code: str
    name: str
    billed: int = 0              # students billed to this school
    shared_billed_here: int = 0  # of which also members of another school
    billed_elsewhere: int = 0    # students of this school billed to another school
    suspended: int = 0
    not_student: int = 0         # hosted accounts (trainers, referents) and other types
    no_type: int = 0             # no account type: to fix in the account data
    after_cutoff: int = 0        # joined after the campaign end


@dataclass(frozen=True)
class SharedStudent:
    username: str
    schools: tuple[str, ...]
    billed_to: str


@dataclass
class BillingCount:
    year: int
    cutoff: datetime
    due: date
    rate: Decimal
    snapshot_taken: datetime
    source: str
    rule: str
    schools: list[SchoolCount]
    shared: list[SharedStudent] = field(default_factory=list)

    @property
    def total_students(self) -> int:
        return sum(s.billed for s in self.schools)

    def amount(self, students: int) -> Decimal:
        return (self.rate * students).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def campaign_cutoff(inv: Inventory, year: int, timezone: str) -> datetime:
    """End of the campaign-end day of `year`, in the platform's time zone; the
    day must fall within the agreement."""
    p = inv.platform
    try:
        day = p.billing_campaign_end.in_year(year)
    except ValueError:
        raise CapacityError(f"year {year} is not valid") from None
    if not p.agreement_start <= day <= p.agreement_end:
        first = next(y for y in range(p.agreement_start.year, p.agreement_end.year + 1)
                     if p.agreement_start <= p.billing_campaign_end.in_year(y))
        last = max(y for y in range(p.agreement_start.year, p.agreement_end.year + 1)
                   if p.billing_campaign_end.in_year(y) <= p.agreement_end)
        raise CapacityError(f"year {year}: campaign end {day} is outside the agreement "
                            f"({p.agreement_start} to {p.agreement_end}); billing years are {first} to {last}")
    return datetime.combine(day, time(23, 59, 59), ZoneInfo(timezone))


RULE = ("a user counts once, for one school, when: not deleted; member of the school "
        "({method}) by the campaign end; account type (profile field {field}) one of {types}; "
        "not suspended (suspended flag or auth nologin) when counted. A student of several "
        "schools is billed to the school joined first (ties: inventory order) and listed.")


def count(inv: Inventory, snap: Snapshot, year: int, timezone: str) -> BillingCount:
    p = inv.platform
    cutoff = campaign_cutoff(inv, year, timezone)
    limit = int(cutoff.timestamp())
    student_types = {t.casefold() for t in p.accounts.student_types}
    order = {s.code: i for i, s in enumerate(inv.schools)}
    counts = {s.code: SchoolCount(s.code, s.name) for s in inv.schools}
    eligible: dict[int, list[Membership]] = defaultdict(list)
    for m in snap.memberships:
        c = counts.get(m.school)
        if c is None:
            continue  # a school no longer in the inventory is not billed
        if m.since > limit:
            c.after_cutoff += 1
        elif not m.account_type:
            c.no_type += 1
        elif m.account_type.casefold() not in student_types:
            c.not_student += 1
        elif m.suspended:
            c.suspended += 1
        else:
            eligible[m.userid].append(m)
    shared = []
    for userid in sorted(eligible):
        ms = sorted(eligible[userid], key=lambda m: (m.since, order[m.school]))
        billed_to = ms[0].school
        counts[billed_to].billed += 1
        if len(ms) > 1:
            counts[billed_to].shared_billed_here += 1
            for other in ms[1:]:
                counts[other.school].billed_elsewhere += 1
            shared.append(SharedStudent(ms[0].username, tuple(m.school for m in ms), billed_to))
    rule = RULE.format(method=p.membership_method, field=p.accounts.account_type_field,
                       types=", ".join(p.accounts.student_types))
    return BillingCount(year, cutoff, p.billing_count_due.in_year(year), p.rate_eur_per_student,
                        datetime.fromtimestamp(snap.taken_at, UTC), snap.source, rule,
                        list(counts.values()), sorted(shared, key=lambda s: s.username))


# -- output ----------------------------------------------------------------------

CSV_HEADER = ("year", "school", "name", "students", "rate_eur", "amount_eur", "shared_billed_here",
              "billed_to_other_school", "suspended_not_billed", "not_student", "no_account_type",
              "joined_after_campaign_end")


def to_csv(b: BillingCount) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for s in b.schools:
        w.writerow((b.year, s.code, s.name, s.billed, b.rate, b.amount(s.billed), s.shared_billed_here,
                    s.billed_elsewhere, s.suspended, s.not_student, s.no_type, s.after_cutoff))
    w.writerow((b.year, "TOTAL", "all schools", b.total_students, b.rate, b.amount(b.total_students),
                sum(s.shared_billed_here for s in b.schools), "", sum(s.suspended for s in b.schools),
                sum(s.not_student for s in b.schools), sum(s.no_type for s in b.schools),
                sum(s.after_cutoff for s in b.schools)))
    return out.getvalue()


def shared_csv(b: BillingCount) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("username", "schools", "billed_to"))
    for s in b.shared:
        w.writerow((s.username, " ".join(s.schools), s.billed_to))
    return out.getvalue()


def to_text(b: BillingCount) -> str:
    width = max(len(s.name) for s in b.schools)
    lines = [
        f"Billing count {b.year}: enrolled students per school at the end of the enrolment campaign",
        f"  campaign end:  {b.cutoff.isoformat()}",
        f"  due to the Région by {b.due.isoformat()}",
        f"  rate:          {b.rate} EUR per student",
        f"  data:          {b.source}, read {b.snapshot_taken.isoformat(timespec='seconds')}",
        f"  rule:          {b.rule}",
        "",
        f"{'school':<{width}}  {'students':>8}  {'amount EUR':>12}  notes",
    ]
    for s in b.schools:
        notes = []
        if s.shared_billed_here:
            notes.append(f"{s.shared_billed_here} also in another school (billed here)")
        if s.billed_elsewhere:
            notes.append(f"{s.billed_elsewhere} billed to another school")
        if s.suspended:
            notes.append(f"{s.suspended} suspended, not billed")
        if s.no_type:
            notes.append(f"{s.no_type} without account type, not billed: fix the account data")
        if s.after_cutoff:
            notes.append(f"{s.after_cutoff} joined after the campaign end")
        lines.append(f"{s.name:<{width}}  {s.billed:>8}  {b.amount(s.billed):>12}  {'; '.join(notes)}".rstrip())
    lines.append(f"{'TOTAL (each student once)':<{width}}  {b.total_students:>8}  "
                 f"{b.amount(b.total_students):>12}")
    if b.shared:
        lines += ["", f"Students in several schools ({len(b.shared)}), each billed once:"]
        lines += [f"  {s.username}: {', '.join(s.schools)} -> billed to {s.billed_to}" for s in b.shared]
    return "\n".join(lines) + "\n"


def to_json(b: BillingCount) -> dict[str, Any]:
    return {"year": b.year, "cutoff": b.cutoff.isoformat(), "due": b.due.isoformat(), "rate_eur": str(b.rate),
            "rule": b.rule, "source": b.source, "total_students": b.total_students,
            "total_eur": str(b.amount(b.total_students)),
            "schools": [{**asdict(s), "amount_eur": str(b.amount(s.billed))} for s in b.schools],
            "shared": [asdict(s) for s in b.shared]}
