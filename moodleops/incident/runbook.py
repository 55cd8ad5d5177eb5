"""Run a runbook: under the lock, plan from what Moodle holds now, apply through
the PHP helper (or only check, in a dry run), and journal what was done."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from moodleops.incident.csvinput import RenewalRow, read_renewal_csv
from moodleops.incident.errors import IncidentError
from moodleops.incident.helper import IncidentHelper
from moodleops.incident.journal import Journal, RunbookLock, new_incident_id
from moodleops.incident.plan import (
    MissingAccount,
    Plan,
    missing_accounts,
    plan_expire,
    plan_messaging,
    plan_reinstate,
    plan_suspend,
)
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site

INCIDENTS_SUBDIR = "incidents"


@dataclass(frozen=True)
class Who:
    """Why and by whom: goes into every journal record."""

    reason: str
    ticket: str
    operator: str | None = None


@dataclass
class Outcome:
    plan: Plan
    results: list[dict[str, Any]]
    dry_run: bool
    incident: str | None = None
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r["status"] == status)

    @property
    def drift(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] in ("drift", "gone")]

    def render(self) -> list[str]:
        p = self.plan
        head = f"{self.incident} {p.action}" if self.incident else f"{p.action} (dry run)"
        lines = [f"{head}: {describe_scope(p)}"]
        lines += [f"  note: {n}" for n in p.notes]
        labels = {(c.kind, c.id): c.label for c in p.changes}
        verbs = {"would_change": "would change", "changed": "changed", "unchanged": "already so, unchanged",
                 "drift": "DRIFT: changed since, left as is (--force to override)",
                 "gone": "GONE: no longer in Moodle, left as is"}
        if self.results:
            lines.append(f"{len(self.results)} object(s):")
        for c, r in zip(p.changes, self.results, strict=True):
            label = labels.get((r["kind"], r["id"]), "")
            lines.append(f"  {_object(r['kind'], r['id'], label)}  {_delta(c.to, r['before'])}  "
                         f"[{verbs.get(r['status'], r['status'])}]")
        if p.skipped:
            lines.append(f"{len(p.skipped)} left alone:")
            lines += [f"  {_object(s.kind, s.id, s.label)}  {s.why}" for s in p.skipped]
        if not p.changes:
            lines.append("nothing to change")
        elif self.dry_run:
            lines.append("dry run: nothing changed; add --apply to do it")
        else:
            lines.append(f"done: {self.count('changed')} changed, {self.count('unchanged')} already so, "
                         f"{len(self.drift)} drift left as is; journal {self.incident}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def _object(kind: str, oid: int, label: str) -> str:
    noun = {"user_suspended": "user", "category_visible": "category", "messaging_blocked": "messaging of user",
            "platform_maintenance": "platform"}.get(kind, kind)
    return f"{noun} {oid} {label}".rstrip() if kind != "platform_maintenance" else "platform"


def _delta(to: dict[str, Any], before: dict[str, Any] | None) -> str:
    def short(v: Any) -> str:
        return repr(v) if isinstance(v, str) else str(v)
    parts = []
    for k, v in to.items():
        was = (before or {}).get(k, "?")
        parts.append(f"{k} {short(was)} -> {short(v)}")
    return ", ".join(parts)


def describe_scope(plan: Plan) -> str:
    s = plan.scope
    if plan.action == "reinstate":
        return f"undo {s['incident']} ({s.get('action')})"
    bits = []
    if s.get("schools"):
        bits.append("school " + ", ".join(s["schools"]))
    if s.get("users"):
        users = s["users"]
        bits.append(f"users {', '.join(users[:5])}{'...' if len(users) > 5 else ''} ({len(users)})")
    if s.get("platform"):
        bits.append("the whole platform (maintenance mode)")
    if s.get("renewals"):
        bits.append(f"expiry on {s['date']}, renewal lists of {', '.join(sorted(s['renewals']))}")
    return "; ".join(bits) or "-"


class Runbook:
    def __init__(self, inv: Inventory, site: Site, *, journal_copy: Path | None,
                 helper_script: str | None = None) -> None:
        self.inv = inv
        self.site = site
        self.helper = IncidentHelper(MoodleCLI(site), inv, **({"script": helper_script} if helper_script else {}))
        self.host_dir = site.state_dir / INCIDENTS_SUBDIR
        self.journal = Journal(self.host_dir, journal_copy, inv.env)

    # -- planners: each returns a function so the plan is made under the lock -------

    def suspend(self, *, schools: tuple[str, ...] = (), users: tuple[str, ...] = (), platform: bool = False,
                hide_category: bool = False, include_multi_school: bool = False,
                message: str | None = None) -> Callable[[], Plan]:
        chosen = tuple(self.inv.school(code) for code in schools)   # unknown code -> InventoryError
        if not (chosen or users or platform):
            raise IncidentError("no scope: give --school CODE, --users a,b, --users-csv FILE or --platform")
        if hide_category and not chosen:
            raise IncidentError("--hide-category needs --school")
        scope = {"schools": [s.code for s in chosen], "users": list(users), "platform": platform,
                 "hide_category": hide_category, "include_multi_school": include_multi_school,
                 "membership": self.inv.platform.membership_method}

        def make() -> Plan:
            snap = self.helper.read(expand=chosen, usernames=users,
                                    categories=tuple(s.category_idnumber for s in chosen))
            return plan_suspend(snap, scope=scope, schools=chosen, named=users, hide_category=hide_category,
                                include_multi_school=include_multi_school, platform=platform, message=message)
        return make

    def messaging(self, users: tuple[str, ...], *, block: bool) -> Callable[[], Plan]:
        if not users:
            raise IncidentError("no users: give --users a,b or --users-csv FILE")

        def make() -> Plan:
            return plan_messaging(self.helper.read(usernames=users), scope={"users": list(users)}, block=block)
        return make

    def reinstate(self, incident_id: str) -> Callable[[], Plan]:
        self.journal.incident(incident_id)   # unknown id: fail before taking the lock

        def make() -> Plan:
            return plan_reinstate(self.journal.incident(incident_id))
        return make

    def read_renewals(self, files: dict[str, Path]) -> dict[str, list[RenewalRow]]:
        if not files:
            raise IncidentError("no renewal list: give --renewals SCHOOL=FILE.csv (one per school)")
        return {code: read_renewal_csv(path, code) for code, path in files.items()}

    def expire(self, day: date, renewals: dict[str, list[RenewalRow]]) -> Callable[[], Plan]:
        scope = {"date": day.isoformat(), "renewals": sorted(renewals),
                 "renewed": {c: sorted(r.username for r in rows) for c, rows in renewals.items()}}

        def make() -> Plan:
            names = tuple(r.username for rows in renewals.values() for r in rows)
            snap = self.helper.read(usernames=names, hosted=True)
            # Names on the lists that Moodle lacks are reported, not fatal: that is the missing-accounts case.
            return plan_expire(snap, scope=scope, day=day, rules=self.inv.platform.accounts, renewals=renewals)
        return make

    def missing_accounts(self, day: date, renewals: dict[str, list[RenewalRow]]) -> tuple[list[MissingAccount], int]:
        rows = [r for rs in renewals.values() for r in rs]
        snap = self.helper.read(usernames=tuple(r.username for r in rows))
        existing = {u.username for u in snap.users}
        return missing_accounts(rows, existing, day=day, sla_days=self.inv.platform.accounts.new_account_sla_days)

    # -- execution -------------------------------------------------------------------

    def run(self, make: Callable[[], Plan], *, apply: bool, who: Who | None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Outcome:
        if not apply:
            plan = make()
            results = self.helper.apply([c.payload() for c in plan.changes], dry_run=True, force=force)
            return Outcome(plan, results, dry_run=True)
        if who is None:
            raise IncidentError("applying needs a reason and a ticket (--reason, --ticket)")
        with RunbookLock(self.host_dir, f"moodleops incident (user {getpass.getuser()})"):
            plan = make()
            if not plan.changes:
                return Outcome(plan, [], dry_run=False)
            if progress:
                progress(f"applying {len(plan.changes)} change(s) through Moodle...")
            incident = new_incident_id()
            started = datetime.now(UTC)
            results = self.helper.apply([c.payload() for c in plan.changes], dry_run=False, force=force)
            record = self._record(incident, plan, results, who, force, started)
            warnings = self.journal.append(record)
            return Outcome(plan, results, dry_run=False, incident=incident, warnings=warnings)

    def _record(self, incident: str, plan: Plan, results: list[dict[str, Any]], who: Who, force: bool,
                started: datetime) -> dict[str, Any]:
        labels = {(c.kind, c.id): c.label for c in plan.changes}
        return {
            "v": 1,
            "incident": incident,
            "action": plan.action,
            "reinstates": plan.reinstates,
            "at": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "env": self.inv.env,
            "host": socket.gethostname(),
            "os_user": getpass.getuser(),
            "sudo_user": os.environ.get("SUDO_USER"),
            "operator": who.operator,
            "reason": who.reason,
            "ticket": who.ticket,
            "forced": force,
            "scope": plan.scope,
            "changes": [{"kind": r["kind"], "id": r["id"], "label": labels.get((r["kind"], r["id"]), ""),
                         "before": r["before"], "after": r["after"], "status": r["status"]} for r in results],
            "skipped": [{"kind": s.kind, "id": s.id, "label": s.label, "why": s.why} for s in plan.skipped],
            "notes": plan.notes,
        }
