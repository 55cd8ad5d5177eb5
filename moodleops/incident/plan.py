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
from moodleops.incident.journal import Holds, Incident, key_of
from moodleops.inventory import AccountRules, School

OPS_APPLIED = ("change", "restore", "set")   # the ones sent to Moodle


@dataclass(frozen=True)
class Change:
    """One object of a plan. op: change (apply `to`, and hold it), hold (already
    so because another open incident holds it: join the hold, change nothing),
    restore (last holder: back to `origin`), release (others still hold it: let
    go, change nothing), set (apply `to` without holding: a final change)."""

    kind: str                     # user_suspended | category_visible | messaging_blocked | platform_maintenance
    id: int                       # | ws_tokens
    label: str                    # username, category idnumber or "platform": what the journal names
    to: dict[str, Any]
    expect: dict[str, Any]        # the state the object must still be in, else it is drift
    op: str = "change"
    before: dict[str, Any] | None = None   # its state as planned (what an undo goes back to)
    origin: dict[str, Any] | None = None   # its state before any incident (what the last holder restores)
    note: str = ""
    irreversible: bool = False

    @property
    def applies(self) -> bool:
        return self.op in OPS_APPLIED

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "to": self.to, "expect": self.expect}

    def entry(self) -> dict[str, Any]:
        """The intent's record of this object."""
        return {"kind": self.kind, "id": self.id, "label": self.label, "op": self.op, "to": self.to,
                "expect": self.expect, "before": self.before, "origin": self.origin, "note": self.note,
                "irreversible": self.irreversible}


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

    @property
    def applied(self) -> list[Change]:
        return [c for c in self.changes if c.applies]


NO_HOLDS = Holds({}, {})


def _holders_text(holders: list[tuple[str, dict[str, Any]]]) -> str:
    return ", ".join(sorted({i for i, _ in holders}))


def _hold_or_skip(plan: Plan, holds: Holds, kind: str, oid: int, label: str, to: dict[str, Any],
                  now: dict[str, Any], pre_existing: str) -> None:
    """The object is already in the planned state: join the hold of the open incidents
    that put it there, or -- nobody holds it -- leave a pre-existing state alone."""
    holders = holds.of((kind, oid))
    again = holds.same_runbook(holders, plan.action, plan.scope)
    if again:
        plan.skipped.append(Skip(kind, oid, label, f"already so by {again}, the same runbook: re-running "
                                                   "changes nothing"))
    elif holders:
        plan.changes.append(Change(kind, oid, label, to, {}, op="hold", before=now,
                                   origin=holders[0][1].get("origin"),
                                   note=f"already so by {_holders_text(holders)}: joins the hold"))
    else:
        plan.skipped.append(Skip(kind, oid, label, pre_existing))


def _user_change(plan: Plan, holds: Holds, u: MoodleUser) -> None:
    now = {"suspended": u.suspended, "timemodified": u.timemodified}
    if u.suspended:
        _hold_or_skip(plan, holds, "user_suspended", u.id, u.username, {"suspended": 1}, now,
                      "already suspended before any open incident: never touched")
        return
    plan.changes.append(Change("user_suspended", u.id, u.username, {"suspended": 1}, now,
                               before=now, origin=now))


def _protected(u: MoodleUser) -> str | None:
    if u.siteadmin:
        return "site administrator: never suspended"
    if u.guest:
        return "guest account: never suspended"
    return None


def _token_notes(plan: Plan, users: list[MoodleUser], revoke: bool) -> None:
    with_tokens = [u for u in users if u.tokens]
    total = sum(u.tokens for u in with_tokens)
    if not total:
        return
    if revoke:
        for u in with_tokens:
            plan.changes.append(Change("ws_tokens", u.id, u.username, {"count": 0}, {}, op="set",
                                       before={"count": u.tokens}, irreversible=True))
        plan.notes.append(f"{total} web-service token(s) of {len(with_tokens)} user(s) will be REVOKED: "
                          "this cannot be undone (reinstatement does not bring them back; the users "
                          "create new ones)")
    else:
        plan.notes.append(f"{total} web-service token(s) belong to {len(with_tokens)} of these user(s): "
                          "refused while suspended, valid again at reinstatement (--revoke-tokens revokes "
                          "them, irreversibly)")


def plan_suspend(snap: Snapshot, *, scope: dict[str, Any], schools: tuple[School, ...],
                 named: tuple[str, ...], hide_category: bool, include_multi_school: bool,
                 platform: bool, message: str | None, holds: Holds = NO_HOLDS,
                 revoke_tokens: bool = False) -> Plan:
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
    in_scope: list[MoodleUser] = []
    for u in sorted(snap.users, key=lambda u: u.username):
        why = _protected(u)
        others = [c for c in u.schools if c not in codes]
        if why is None and u.username not in named_set and others and not include_multi_school:
            why = f"also in school {', '.join(others)}: left alone (use --include-multi-school)"
        if why:
            plan.skipped.append(Skip("user_suspended", u.id, u.username, why))
        else:
            in_scope.append(u)
            _user_change(plan, holds, u)
    _token_notes(plan, in_scope, revoke_tokens)
    if hide_category:
        for s in schools:
            cat = snap.categories.get(s.category_idnumber)
            if cat is None:
                raise IncidentError(f"school {s.code}: no category with idnumber {s.category_idnumber} "
                                    "in Moodle; nothing changed")
            now = {"visible": int(cat["visible"])}
            if not cat["visible"]:
                _hold_or_skip(plan, holds, "category_visible", cat["id"], s.category_idnumber, {"visible": 0},
                              now, "already hidden before any open incident: never touched")
            else:
                plan.changes.append(Change("category_visible", cat["id"], s.category_idnumber,
                                           {"visible": 0}, now, before=now, origin=now))
    if platform:
        p = snap.platform
        now = {"cli_maintenance": int(bool(p["cli_maintenance"])), "maintenance_enabled":
               int(p.get("maintenance_enabled", 0)), "maintenance_message": p["maintenance_message"]}
        if now["cli_maintenance"]:
            _hold_or_skip(plan, holds, "platform_maintenance", 0, "platform", {"cli_maintenance": 1}, now,
                          "already in CLI maintenance before any open incident: never touched")
        else:
            to: dict[str, Any] = {"cli_maintenance": 1}
            if message is not None:
                to["maintenance_message"] = message
            plan.changes.append(Change("platform_maintenance", 0, "platform", to,
                                       {"cli_maintenance": 0, "maintenance_message": now["maintenance_message"]},
                                       before=now, origin=now))
    return plan


def plan_messaging(snap: Snapshot, *, scope: dict[str, Any], block: bool, holds: Holds = NO_HOLDS) -> Plan:
    plan = Plan("messaging-suspend" if block else "messaging-reinstate", scope)
    if snap.missing_usernames:
        raise IncidentError(f"unknown user(s) {', '.join(snap.missing_usernames)}: not in Moodle "
                            "(or deleted); nothing changed")
    for u in sorted(snap.users, key=lambda u: u.username):
        now = {"blocked": int(u.messaging_blocked)}
        holders = holds.of(("messaging_blocked", u.id))
        if block and u.siteadmin:
            plan.skipped.append(Skip("messaging_blocked", u.id, u.username,
                                     "site administrator: capabilities do not apply"))
        elif block and u.messaging_blocked:
            _hold_or_skip(plan, holds, "messaging_blocked", u.id, u.username, {"blocked": 1}, now,
                          "messaging already suspended before any open incident: never touched")
        elif block:
            plan.changes.append(Change("messaging_blocked", u.id, u.username, {"blocked": 1}, now,
                                       before=now, origin=now))
        elif holders:
            plan.skipped.append(Skip("messaging_blocked", u.id, u.username,
                                     f"held by open incident {_holders_text(holders)}: reinstate it "
                                     "(`moodleops incident reinstate ID`)"))
        elif not u.messaging_blocked:
            plan.skipped.append(Skip("messaging_blocked", u.id, u.username, "messaging not suspended"))
        else:
            plan.changes.append(Change("messaging_blocked", u.id, u.username, {"blocked": 0}, now, op="set",
                                       before=now, origin=now))
    return plan


_RESTORE_KEYS = {"user_suspended": ("suspended",), "category_visible": ("visible",),
                 "messaging_blocked": ("blocked",),
                 "platform_maintenance": ("cli_maintenance", "maintenance_enabled", "maintenance_message")}
_EXPECT_KEYS = {"user_suspended": ("suspended", "timemodified"), "category_visible": ("visible",),
                "messaging_blocked": ("blocked",), "platform_maintenance": ("cli_maintenance",)}


def restore_target(kind: str, origin: dict[str, Any], last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(to, expect) that puts one object back to `origin`, provided it is still as
    moodleops last left it (`last`)."""
    if kind not in _RESTORE_KEYS:
        raise IncidentError(f"journal change kind {kind!r} is not known to this version of moodleops")
    to = {k: origin[k] for k in _RESTORE_KEYS[kind] if k in origin}
    expect = {k: last[k] for k in _EXPECT_KEYS[kind] if k in last}
    return to, expect


def plan_reinstate(incident: Incident, holds: Holds, *, incidents: dict[str, Incident] | None = None) -> Plan:
    rec = incident.intent
    if incident.action == "reinstate":
        raise IncidentError(f"{incident.id} is itself a reinstatement (of {rec.get('reinstates')}); "
                            "give the id of the incident to undo")
    if not incident.complete:
        raise IncidentError(f"incident {incident.id} is incomplete: run `moodleops incident recover` first")
    pending = incident.pending()
    if not pending:
        if incident.outcome == "undone":
            raise IncidentError(f"incident {incident.id} was undone by `incident recover`: nothing to reinstate")
        if not incident.held():
            raise IncidentError(f"incident {incident.id} holds nothing (it changed nothing, or only made "
                                "final changes): there is nothing to reinstate")
        last = [r for r in incident.reinstatements if r.outcome == "done"][-1]
        raise IncidentError(f"incident {incident.id} was already reinstated by {last.id} "
                            f"at {last.intent.get('at')}; nothing changed")
    plan = Plan("reinstate", {"incident": incident.id, "action": rec.get("action"), "scope": rec.get("scope")},
                reinstates=incident.id)
    still: dict[str, list[str]] = {}
    # Undo in reverse order: the platform and categories come back after the users.
    for e in reversed(pending):
        k = key_of(e)
        others = holds.of(k, besides=incident.id)
        last = holds.last_state.get(k) or incident.results.get(k, {}).get("after") or e.get("before") or {}
        if others:
            names = _holders_text(others)
            plan.changes.append(Change(e["kind"], int(e["id"]), str(e.get("label", "")), {}, {}, op="release",
                                       before=last, origin=e.get("origin"),
                                       note=f"stays so: still held by {names}"))
            for i, _ in others:
                still.setdefault(i, []).append(str(e.get("label") or e["id"]))
            continue
        to, expect = restore_target(e["kind"], e.get("origin") or {}, last)
        plan.changes.append(Change(e["kind"], int(e["id"]), str(e.get("label", "")), to, expect, op="restore",
                                   before=last, origin=e.get("origin")))
    for other, labels in sorted(still.items()):
        what = (incidents or {}).get(other)
        act = f" ({what.action})" if what else ""
        plan.notes.append(f"{other}{act} still holds {len(labels)} object(s): {', '.join(labels[:10])}"
                          f"{'...' if len(labels) > 10 else ''}; they stay as they are until it is reinstated")
    revoked = [e for e in incident.entries if e.get("irreversible")
               and incident.results.get(key_of(e), {}).get("status") == "changed"]
    if revoked:
        plan.notes.append(f"{sum(int((e.get('before') or {}).get('count', 0)) for e in revoked)} web-service "
                          f"token(s) revoked by {incident.id} cannot be restored: the users create new ones")
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
                renewals: dict[str, list[RenewalRow]], holds: Holds = NO_HOLDS) -> Plan:
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
        if why:
            plan.skipped.append(Skip("user_suspended", u.id, u.username, why))
        else:
            _user_change(plan, holds, u)
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
