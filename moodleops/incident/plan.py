"""What a runbook would change, worked out from a Snapshot of Moodle: pure
functions, no I/O, so the rules (admins never, multi-school users left alone,
students never expired, exact reinstatement) are in one readable place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from moodleops.incident.csvinput import RenewalRow
from moodleops.incident.errors import IncidentError
from moodleops.incident.helper import MoodleUser, Snapshot
from moodleops.incident.journal import Incident
from moodleops.inventory import AccountRules, School


@dataclass(frozen=True)
class Change:
    kind: str                     # user_suspended | category_visible | messaging_blocked | platform_maintenance
    id: int
    label: str                    # username, category idnumber or "platform": what the journal names
    to: dict[str, Any]
    expect: dict[str, Any]        # the state the object must still be in, else it is drift

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "to": self.to, "expect": self.expect}


@dataclass(frozen=True)
class Skip:
    kind: str
    id: int
    label: str
    why: str


@dataclass
class Plan:
    action: str                   # suspend | reinstate | messaging-suspend | messaging-reinstate | expire
    scope: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reinstates: str | None = None


def _user_change(u: MoodleUser, suspended: int) -> Change:
    return Change("user_suspended", u.id, u.username, {"suspended": suspended},
                  {"suspended": u.suspended, "timemodified": u.timemodified})


def _protected(u: MoodleUser) -> str | None:
    if u.siteadmin:
        return "site administrator: never suspended"
    if u.guest:
        return "guest account: never suspended"
    return None


def plan_suspend(snap: Snapshot, *, scope: dict[str, Any], schools: tuple[School, ...],
                 named: tuple[str, ...], hide_category: bool, include_multi_school: bool,
                 platform: bool, message: str | None) -> Plan:
    plan = Plan("suspend", scope)
    for code, problem in snap.school_problems.items():
        if any(s.code == code for s in schools):
            raise IncidentError(f"school {code}: {problem} in Moodle (membership per platform.yml "
                                "school_membership); nothing changed")
    if snap.missing_usernames:
        raise IncidentError(f"unknown user(s) {', '.join(snap.missing_usernames)}: not in Moodle "
                            "(or deleted); nothing changed")
    codes = {s.code for s in schools}
    named_set = set(named)
    for u in sorted(snap.users, key=lambda u: u.username):
        why = _protected(u)
        others = [c for c in u.schools if c not in codes]
        if why is None and u.username not in named_set and others and not include_multi_school:
            why = f"also in school {', '.join(others)}: left alone (use --include-multi-school)"
        if why is None and u.suspended:
            why = "already suspended: stays suspended at reinstatement"
        if why:
            plan.skipped.append(Skip("user_suspended", u.id, u.username, why))
        else:
            plan.changes.append(_user_change(u, 1))
    if hide_category:
        for s in schools:
            cat = snap.categories.get(s.category_idnumber)
            if cat is None:
                raise IncidentError(f"school {s.code}: no category with idnumber {s.category_idnumber} "
                                    "in Moodle; nothing changed")
            if not cat["visible"]:
                plan.skipped.append(Skip("category_visible", cat["id"], s.category_idnumber,
                                         "already hidden: stays hidden at reinstatement"))
            else:
                plan.changes.append(Change("category_visible", cat["id"], s.category_idnumber,
                                           {"visible": 0}, {"visible": 1}))
    if platform:
        now = snap.platform
        if now["cli_maintenance"]:
            plan.skipped.append(Skip("platform_maintenance", 0, "platform",
                                     "already in maintenance mode: stays so at reinstatement"))
        else:
            to: dict[str, Any] = {"cli_maintenance": 1}
            if message is not None:
                to["maintenance_message"] = message
            plan.changes.append(Change("platform_maintenance", 0, "platform", to,
                                       {"cli_maintenance": 0, "maintenance_message": now["maintenance_message"]}))
    return plan


def plan_messaging(snap: Snapshot, *, scope: dict[str, Any], block: bool) -> Plan:
    plan = Plan("messaging-suspend" if block else "messaging-reinstate", scope)
    if snap.missing_usernames:
        raise IncidentError(f"unknown user(s) {', '.join(snap.missing_usernames)}: not in Moodle "
                            "(or deleted); nothing changed")
    for u in sorted(snap.users, key=lambda u: u.username):
        if block and u.siteadmin:
            plan.skipped.append(Skip("messaging_blocked", u.id, u.username,
                                     "site administrator: capabilities do not apply"))
        elif u.messaging_blocked == block:
            plan.skipped.append(Skip("messaging_blocked", u.id, u.username,
                                     "messaging already suspended" if block else "messaging not suspended"))
        else:
            plan.changes.append(Change("messaging_blocked", u.id, u.username, {"blocked": int(block)},
                                       {"blocked": int(not block)}))
    return plan


def _restore_target(change: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(to, expect) that undoes one journalled change: back to `before` on the
    keys the change set, provided the object is still as the incident left it."""
    before, after = change["before"] or {}, change["after"] or {}
    kind = change["kind"]
    if kind == "user_suspended":
        return {"suspended": before["suspended"]}, {"suspended": after["suspended"],
                                                    "timemodified": after["timemodified"]}
    if kind == "category_visible":
        return {"visible": before["visible"]}, {"visible": after["visible"]}
    if kind == "messaging_blocked":
        return {"blocked": before["blocked"]}, {"blocked": after["blocked"]}
    if kind == "platform_maintenance":
        return ({"cli_maintenance": before["cli_maintenance"], "maintenance_message": before["maintenance_message"]},
                {"cli_maintenance": after["cli_maintenance"]})
    raise IncidentError(f"journal change kind {kind!r} is not known to this version of moodleops")


def plan_reinstate(incident: Incident) -> Plan:
    rec = incident.record
    if rec.get("action") == "reinstate":
        raise IncidentError(f"{incident.id} is itself a reinstatement (of {rec.get('reinstates')}); "
                            "give the id of the incident to undo")
    pending = incident.pending()
    if not pending:
        if incident.state == "no-change":
            raise IncidentError(f"incident {incident.id} changed nothing: there is nothing to reinstate")
        last = incident.reinstatements[-1]
        raise IncidentError(f"incident {incident.id} was already reinstated by {last['incident']} "
                            f"at {last['at']}; nothing changed")
    plan = Plan("reinstate", {"incident": incident.id, "action": rec.get("action"), "scope": rec.get("scope")},
                reinstates=incident.id)
    # Undo in reverse order: the platform and categories come back after the users.
    for c in reversed(pending):
        to, expect = _restore_target(c)
        plan.changes.append(Change(c["kind"], int(c["id"]), str(c.get("label", "")), to, expect))
    return plan


def expiry_window(day: date, rules: AccountRules) -> tuple[date, date]:
    """(expiry date, first day a renewal counts for it). `day` must be on or after
    the expiry date of its year (platform.yml accounts.hosted_expiry)."""
    expiry = rules.hosted_expiry.in_year(day.year)
    if day < expiry:
        raise IncidentError(f"--date {day}: hosted accounts expire on {expiry:%d %B} "
                            f"(platform.yml accounts.hosted_expiry {rules.hosted_expiry.month:02d}-"
                            f"{rules.hosted_expiry.day:02d}); {day} is before {expiry}")
    previous = rules.hosted_expiry.in_year(day.year - 1)
    return expiry, previous


def plan_expire(snap: Snapshot, *, scope: dict[str, Any], day: date, rules: AccountRules,
                renewals: dict[str, list[RenewalRow]]) -> Plan:
    if not snap.account_type_field_exists:
        raise IncidentError(f"custom profile field {rules.account_type_field!r} (platform.yml "
                            "accounts.account_type_field) does not exist in Moodle: hosted accounts "
                            "cannot be told from students; nothing changed")
    expiry, previous = expiry_window(day, rules)
    plan = Plan("expire", scope)
    renewed: dict[str, set[str]] = {code: set() for code in renewals}
    by_name = snap.user_by_name()
    for code, rows in renewals.items():
        for row in rows:
            if not previous < row.requested <= day:
                plan.notes.append(f"{row.source}: {row.username} requested {row.requested}, outside the "
                                  f"campaign {previous}..{day}: not counted as a renewal")
                continue
            renewed[code].add(row.username)
            u = by_name.get(row.username)
            if u is None:
                plan.notes.append(f"{row.source}: {row.username} has no account in Moodle yet "
                                  "(see `moodleops incident missing-accounts`)")
            elif code not in u.schools:
                plan.notes.append(f"{row.source}: {row.username} is not a member of school {code} in Moodle")
    for u in sorted(snap.users, key=lambda u: u.username):
        if u.account_type not in rules.hosted_types:
            continue   # students (and accounts of no known type) are never touched by expiry
        listed = [c for c in u.schools if c in renewals]
        if not listed:
            continue   # none of the user's schools sent a list in this run
        if any(u.username in renewed[c] for c in listed):
            continue
        unlisted = [c for c in u.schools if c not in renewals]
        why = _protected(u)
        if why is None and unlisted:
            why = f"also in school {', '.join(unlisted)}, whose renewal list was not given: left alone"
        if why is None and u.suspended:
            why = "already suspended"
        if why:
            plan.skipped.append(Skip("user_suspended", u.id, u.username, why))
        else:
            plan.changes.append(_user_change(u, 1))
    plan.notes.insert(0, f"hosted accounts ({', '.join(rules.hosted_types)}) of "
                         f"{', '.join(sorted(renewals))} not renewed for {expiry.year}-{expiry.year + 1} "
                         f"expire on {expiry}")
    return plan


@dataclass(frozen=True)
class MissingAccount:
    school: str
    username: str
    requested: date
    days: int
    source: str


def missing_accounts(rows: list[RenewalRow], existing: set[str], *, day: date,
                     sla_days: int) -> tuple[list[MissingAccount], int]:
    """Accounts requested more than `sla_days` ago that Moodle still lacks, and
    how many more are missing but still within the SLA."""
    late: list[MissingAccount] = []
    within = 0
    for row in rows:
        if row.username in existing or row.requested > day:
            continue
        age = (day - row.requested).days
        if age > sla_days:
            late.append(MissingAccount(row.school, row.username, row.requested, age, row.source))
        else:
            within += 1
    return sorted(late, key=lambda m: (m.school, m.requested, m.username)), within
