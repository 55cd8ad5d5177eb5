"""Run a runbook: under the platform lock, plan from what Moodle and the journal
hold now, journal the intent, apply through the PHP helper chunk by chunk (each
chunk journalled as it lands), close; or only check, in a dry run. `recover`
resolves an incident that was interrupted."""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from moodleops.incident.csvinput import RenewalRow, read_renewal_csv
from moodleops.incident.errors import IncidentError, IncidentIncomplete, LockBusy
from moodleops.incident.helper import IncidentHelper
from moodleops.incident.journal import Holds, Incident, Journal, key_of, new_incident_id
from moodleops.incident.plan import (
    OPS_APPLIED,
    MissingAccount,
    Plan,
    missing_accounts,
    plan_expire,
    plan_messaging,
    plan_reinstate,
    plan_suspend,
    restore_target,
)
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.platform.lock import PlatformLockBusy, PlatformLockError, platform_lock, writer_lock_spec
from moodleops.site import Site

INCIDENTS_SUBDIR = "incidents"
DEFAULT_CHUNK = 200
# Tests only: "<point>:<marker file>" stalls there until killed; with ":<seconds>"
# after it, holds that long and goes on (a runbook that keeps the lock a while).
FAULT_ENV = "MOODLEOPS_FAULT"
Maker = Callable[[Holds, dict[str, Incident]], Plan]


def _fault() -> dict[str, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec or ":" not in spec:
        return None
    point, marker, hold = (*spec.split(":", 2), "")[:3]
    return {"point": point, "marker": marker, "hold": hold}


def _stall(point: str) -> None:
    """Fault injection for the kill tests: write the marker, then wait to be
    killed (or, with a hold, wait that long and go on)."""
    fault = _fault()
    if fault and fault["point"] == point:
        Path(fault["marker"]).write_text(point + "\n", encoding="utf-8")
        if fault["hold"]:
            time.sleep(float(fault["hold"]))
            return
        time.sleep(600)
        raise SystemExit(9)


def _matches(state: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    return state is not None and all(k in state and state[k] == v for k, v in want.items())


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
        verbs = {"would_change": "would change", "changed": "changed", "unchanged": "already so, unchanged",
                 "drift": "DRIFT: changed since, left as is (--force to override)",
                 "gone": "GONE: no longer in Moodle, left as is"}
        by_key = {key_of(r): r for r in self.results}
        if p.changes:
            lines.append(f"{len(p.changes)} object(s):")
        for c in p.changes:
            r = by_key.get((c.kind, c.id))
            if c.applies and r is not None:
                irr = "  IRREVERSIBLE" if c.irreversible else ""
                lines.append(f"  {_object(c.kind, c.id, c.label)}  {_delta(c.to, r['before'])}  "
                             f"[{verbs.get(r['status'], r['status'])}]{irr}")
            elif c.applies:
                lines.append(f"  {_object(c.kind, c.id, c.label)}  {_delta(c.to, c.before)}  [not applied]")
            else:
                verb = {"hold": "held", "release": "released"}.get(c.op, c.op)
                lines.append(f"  {_object(c.kind, c.id, c.label)}  {c.note}  [{verb}]")
        if p.skipped:
            lines.append(f"{len(p.skipped)} left alone:")
            lines += [f"  {_object(s.kind, s.id, s.label)}  {s.why}" for s in p.skipped]
        if not p.changes:
            lines.append("nothing to change")
        elif self.dry_run:
            lines.append("dry run: nothing changed; add --apply to do it")
        else:
            held = sum(1 for c in p.changes if c.op in ("hold", "release"))
            lines.append(f"done: {self.count('changed')} changed, {self.count('unchanged')} already so, "
                         f"{len(self.drift)} drift left as is, {held} hold(s) taken or released; "
                         f"journal {self.incident}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def _object(kind: str, oid: int, label: str) -> str:
    noun = {"user_suspended": "user", "category_visible": "category", "messaging_blocked": "messaging of user",
            "platform_maintenance": "platform", "ws_tokens": "web-service tokens of user"}.get(kind, kind)
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
                 helper_script: str | None = None, chunk_size: int = DEFAULT_CHUNK) -> None:
        if chunk_size < 1:
            raise IncidentError(f"--chunk-size {chunk_size}: must be at least 1")
        self.inv = inv
        self.site = site
        self.helper = IncidentHelper(MoodleCLI(site), inv, **({"script": helper_script} if helper_script else {}))
        self.host_dir = site.state_dir / INCIDENTS_SUBDIR
        self.journal = Journal(self.host_dir, journal_copy, inv.env)
        self.chunk_size = chunk_size

    # -- planners: each returns a function so the plan is made under the lock -------

    def suspend(self, *, schools: tuple[str, ...] = (), users: tuple[str, ...] = (), platform: bool = False,
                hide_category: bool = False, include_multi_school: bool = False,
                message: str | None = None, revoke_tokens: bool = False) -> Maker:
        chosen = tuple(self.inv.school(code) for code in schools)   # unknown code -> InventoryError
        if not (chosen or users or platform):
            raise IncidentError("no scope: give --school CODE, --users a,b, --users-csv FILE or --platform")
        if hide_category and not chosen:
            raise IncidentError("--hide-category needs --school")
        scope = {"schools": [s.code for s in chosen], "users": list(users), "platform": platform,
                 "hide_category": hide_category, "include_multi_school": include_multi_school,
                 "membership": self.inv.platform.membership_method, "revoke_tokens": revoke_tokens,
                 "message": message}

        def make(holds: Holds, _incidents: dict[str, Incident]) -> Plan:
            snap = self.helper.read(expand=chosen, usernames=users,
                                    categories=tuple(s.category_idnumber for s in chosen))
            return plan_suspend(snap, scope=scope, schools=chosen, named=users, hide_category=hide_category,
                                include_multi_school=include_multi_school, platform=platform, message=message,
                                holds=holds, revoke_tokens=revoke_tokens)
        return make

    def messaging(self, users: tuple[str, ...], *, block: bool) -> Maker:
        if not users:
            raise IncidentError("no users: give --users a,b or --users-csv FILE")

        def make(holds: Holds, _incidents: dict[str, Incident]) -> Plan:
            return plan_messaging(self.helper.read(usernames=users), scope={"users": list(users)}, block=block,
                                  holds=holds)
        return make

    def reinstate(self, incident_id: str) -> Maker:
        self.journal.incident(incident_id)   # unknown id: fail before taking the lock

        def make(holds: Holds, incidents: dict[str, Incident]) -> Plan:
            return plan_reinstate(incidents[incident_id], holds, incidents=incidents)
        return make

    def read_renewals(self, files: dict[str, Path]) -> dict[str, list[RenewalRow]]:
        if not files:
            raise IncidentError("no renewal list: give --renewals SCHOOL=FILE.csv (one per school)")
        return {code: read_renewal_csv(path, code) for code, path in files.items()}

    def expire(self, day: date, renewals: dict[str, list[RenewalRow]]) -> Maker:
        scope = {"date": day.isoformat(), "renewals": sorted(renewals),
                 "renewed": {c: sorted(r.username for r in rows) for c, rows in renewals.items()}}

        def make(holds: Holds, _incidents: dict[str, Incident]) -> Plan:
            names = tuple(r.username for rows in renewals.values() for r in rows)
            snap = self.helper.read(usernames=names, hosted=True)
            # Names on the lists that Moodle lacks are reported, not fatal: that is the missing-accounts case.
            return plan_expire(snap, scope=scope, day=day, rules=self.inv.platform.accounts, renewals=renewals,
                               holds=holds)
        return make

    def missing_accounts(self, day: date, renewals: dict[str, list[RenewalRow]]) -> tuple[list[MissingAccount], int]:
        rows = [r for rs in renewals.values() for r in rs]
        snap = self.helper.read(usernames=tuple(r.username for r in rows))
        existing = {u.username for u in snap.users}
        return missing_accounts(rows, existing, day=day, sla_days=self.inv.platform.accounts.new_account_sla_days)

    # -- the lock and the incomplete-incident gate -------------------------------------

    @contextmanager
    def locked(self, what: str) -> Iterator[Any]:
        """The platform-wide lock (moodleops/platform/lock.py), as runbook errors."""
        try:
            with platform_lock(self.site, what) as conn:
                yield conn
        except PlatformLockBusy as exc:
            raise LockBusy(str(exc)) from None
        except PlatformLockError as exc:
            raise MoodleError(str(exc)) from None

    def refuse_if_incomplete(self) -> None:
        for inc in self.journal.incomplete():
            done = len(inc.results)
            total = sum(1 for e in inc.entries if e.get("op") in OPS_APPLIED)
            raise IncidentIncomplete(
                f"incident {inc.id} ({inc.action}, started {inc.intent.get('at')} by "
                f"{inc.intent.get('os_user')}) was interrupted: {done} of {total} object(s) acknowledged. "
                "Nothing new starts until it is resolved: run `moodleops incident recover` (dry run), "
                "then `moodleops incident recover --apply`")

    # -- execution -------------------------------------------------------------------

    def run(self, make: Maker, *, apply: bool, who: Who | None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Outcome:
        if not apply:
            incidents = self.journal.incidents()
            plan = make(self.journal.holds(incidents), incidents)
            results = self.helper.apply([c.payload() for c in plan.applied], dry_run=True, force=force)
            warnings = [f"incident {i.id} is incomplete: `moodleops incident recover` must resolve it "
                        "before this can be applied" for i in incidents.values() if not i.complete]
            return Outcome(plan, results, dry_run=True, warnings=warnings)
        if who is None:
            raise IncidentError("applying needs a reason and a ticket (--reason, --ticket)")
        incident = new_incident_id()
        with self.locked(f"incident {incident}") as conn:
            self.refuse_if_incomplete()
            incidents = self.journal.incidents()
            plan = make(self.journal.holds(incidents), incidents)
            if not plan.changes:
                return Outcome(plan, [], dry_run=False)
            warnings = self.journal.append(self._intent(incident, plan, who, force))
            _stall("after-intent")
            try:
                results = self._apply(conn, incident, [c.entry() for c in plan.applied], force=force,
                                      progress=progress, warnings=warnings)
            except MoodleError as exc:
                raise MoodleError(f"{exc} -- incident {incident} is incomplete: `moodleops incident recover` "
                                  "shows what was applied") from None
            warnings += self._close(incident, "done", results)
            return Outcome(plan, results, dry_run=False, incident=incident, warnings=_unique(warnings))

    def _apply(self, conn: Any, incident: str, entries: list[dict[str, Any]], *, force: bool,
               progress: Callable[[str], None] | None, warnings: list[str], phase: str = "apply"
               ) -> list[dict[str, Any]]:
        """Apply through PHP in chunks; journal each chunk's acknowledgement as it comes."""
        if not entries:
            return []
        chunks = -(-len(entries) // self.chunk_size)
        labels = {key_of(e): e.get("label", "") for e in entries}
        results: list[dict[str, Any]] = []
        lock = writer_lock_spec(self.site, conn, incident)
        fault = _fault()
        for n, chunk in enumerate(self.helper.apply_chunks(
                [{"kind": e["kind"], "id": e["id"], "to": e["to"], "expect": e["expect"]} for e in entries],
                chunk_size=self.chunk_size, force=force, lock=lock, fault=fault), 1):
            if n == chunks:
                _stall("before-last-ack")
            for r in chunk:
                r["label"] = labels.get(key_of(r), "")
            warnings += self.journal.append({"type": "chunk", "incident": incident, "phase": phase, "seq": n,
                                             "of": chunks, "results": chunk})
            results += chunk
            if progress:
                progress(f"{incident}: chunk {n}/{chunks} acknowledged, {len(results)}/{len(entries)} object(s)")
        if len(results) != len(entries):
            raise MoodleError(f"the PHP helper acknowledged {len(results)} of {len(entries)} change(s); "
                              "run `moodleops incident recover`")
        return results

    def _close(self, incident: str, outcome: str, results: list[dict[str, Any]], **extra: Any) -> list[str]:
        counts: dict[str, int] = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return self.journal.append({"type": "close", "incident": incident, "outcome": outcome, "counts": counts,
                                    "finished": _now(), **extra})

    def _intent(self, incident: str, plan: Plan, who: Who, force: bool) -> dict[str, Any]:
        return {
            "type": "intent",
            "incident": incident,
            "action": plan.action,
            "reinstates": plan.reinstates,
            "at": _now(),
            "env": self.inv.env,
            "host": socket.gethostname(),
            "os_user": getpass.getuser(),
            "sudo_user": os.environ.get("SUDO_USER"),
            "operator": who.operator,
            "reason": who.reason,
            "ticket": who.ticket,
            "forced": force,
            "scope": plan.scope,
            "chunk_size": self.chunk_size,
            "entries": [c.entry() for c in plan.changes],
            "skipped": [{"kind": s.kind, "id": s.id, "label": s.label, "why": s.why} for s in plan.skipped],
            "notes": plan.notes,
        }

    # -- recovery ----------------------------------------------------------------------

    def assess(self, inc: Incident) -> Assessment:
        """Compare what Moodle holds now with the intent, object by object."""
        a = Assessment(inc)
        applied = [e for e in inc.entries if e.get("op") in OPS_APPLIED]
        unacked = [e for e in applied if key_of(e) not in inc.results]
        a.acked = [inc.results[key_of(e)] for e in applied if key_of(e) in inc.results]
        for e, state in zip(unacked, self.helper.state(unacked), strict=True):
            if state is None:
                a.gone.append(e)
            elif e.get("to") and _matches(state, e["to"]):
                a.unacked_applied.append({"kind": e["kind"], "id": e["id"], "label": e.get("label", ""),
                                          "status": "changed", "before": e.get("before"), "after": state,
                                          "recovered": True})
            elif not e.get("expect") or _matches(state, e["expect"]):
                a.not_applied.append(e)
            else:
                a.drift.append(e)
        return a

    def recover(self, *, apply: bool, undo: bool, who: Who | None,
                progress: Callable[[str], None] | None = None) -> list[Recovery]:
        if not apply:
            # Under the lock too: an incident whose runbook is still running is not "interrupted".
            with self.locked("incident recover (dry run)"):
                return [Recovery(self.assess(inc), undo=undo, dry_run=True) for inc in self.journal.incomplete()]
        if who is None:
            raise IncidentError("applying needs a reason and a ticket (--reason, --ticket)")
        out: list[Recovery] = []
        with self.locked("incident recover") as conn:
            for inc in self.journal.incomplete():
                a = self.assess(inc)
                rec = Recovery(a, undo=undo, dry_run=False)
                warnings = self.journal.append({
                    "type": "recover", "incident": inc.id, "mode": "undo" if undo else "complete", "at": _now(),
                    "os_user": getpass.getuser(), "operator": who.operator, "reason": who.reason,
                    "adopted": a.unacked_applied, "not_applied": len(a.not_applied),
                    "drift": [key_of(e) for e in a.drift], "gone": [key_of(e) for e in a.gone]})
                if not undo:
                    rest = a.not_applied + a.drift
                    rec.results = self._apply(conn, inc.id, rest, force=bool(inc.intent.get("forced")),
                                              progress=progress, warnings=warnings)
                    warnings += self._close(inc.id, "done", a.acked + a.unacked_applied + rec.results,
                                            recovered=True)
                else:
                    rec.results, rec.irreversible = self._undo(conn, inc, a, progress, warnings)
                    warnings += self._close(inc.id, "undone", rec.results, recovered=True)
                rec.warnings = _unique(warnings)
                out.append(rec)
        return out

    def _undo(self, conn: Any, inc: Incident, a: Assessment, progress: Callable[[str], None] | None,
              warnings: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Put back, to its state before this incident, every object it changed."""
        entries = {key_of(e): e for e in inc.entries}
        changed = [r for r in a.acked + a.unacked_applied if r.get("status") == "changed"]
        irreversible = [r for r in changed if entries[key_of(r)].get("irreversible")]
        inverse: list[dict[str, Any]] = []
        for r in changed:
            e = entries[key_of(r)]
            if e.get("irreversible") or key_of(r) in inc.undone:
                continue
            to, expect = restore_target(e["kind"], e.get("before") or {}, r.get("after") or {})
            inverse.append({"kind": e["kind"], "id": e["id"], "label": e.get("label", ""), "to": to,
                            "expect": expect})
        # Killed during an earlier undo: what already went back is not sent again.
        states = self.helper.state(inverse)
        done = [{"kind": c["kind"], "id": c["id"], "label": c["label"], "status": "unchanged", "before": s,
                 "after": s} for c, s in zip(inverse, states, strict=True) if _matches(s, c["to"])]
        if done:
            warnings += self.journal.append({"type": "chunk", "incident": inc.id, "phase": "undo", "seq": 0,
                                             "of": 0, "results": done})
        todo = [c for c, s in zip(inverse, states, strict=True) if not _matches(s, c["to"])]
        results = done + self._apply(conn, inc.id, todo, force=False, progress=progress, warnings=warnings,
                                     phase="undo")
        return results, irreversible


@dataclass
class Assessment:
    incident: Incident
    acked: list[dict[str, Any]] = field(default_factory=list)
    unacked_applied: list[dict[str, Any]] = field(default_factory=list)
    not_applied: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    gone: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Recovery:
    assessment: Assessment
    undo: bool
    dry_run: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    irreversible: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def drift(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] in ("drift", "gone")]

    def render(self) -> list[str]:
        a = self.assessment
        inc = a.incident
        acked_changed = sum(1 for r in a.acked if r.get("status") == "changed")
        lines = [(f"{inc.id} {inc.action} started {inc.intent.get('at')} by {inc.intent.get('os_user')} "
                 f"(ticket {inc.intent.get('ticket')}): INCOMPLETE, {inc.chunks} chunk record(s) in the journal"),
                 f"  acknowledged in the journal: {len(a.acked)} ({acked_changed} changed)",
                 (f"  applied in Moodle but not acknowledged (interrupted before the journal record): "
                 f"{len(a.unacked_applied)}")]
        lines += [f"    {_object(r['kind'], r['id'], r.get('label', ''))}  now {r['after']}" for r in a.unacked_applied]
        lines.append(f"  not applied yet: {len(a.not_applied)}")
        if a.drift:
            lines.append(f"  changed by someone else since the intent (drift): {len(a.drift)}")
            lines += [f"    {_object(e['kind'], e['id'], e.get('label', ''))}" for e in a.drift]
        if a.gone:
            lines.append(f"  no longer in Moodle: {len(a.gone)}")
        applied = acked_changed + len(a.unacked_applied)
        if self.dry_run:
            lines.append(f"dry run: nothing changed. `moodleops incident recover --apply` completes it "
                         f"({len(a.not_applied) + len(a.drift)} left to apply); `moodleops incident recover "
                         f"--undo --apply` puts back the {applied} object(s) it changed")
            irr = [r for r in a.acked + a.unacked_applied if r["kind"] == "ws_tokens" and r["status"] == "changed"]
            if irr:
                lines.append(f"  note: web-service tokens of {len(irr)} user(s) were revoked: an undo cannot "
                             "bring them back")
        elif self.undo:
            lines.append(f"undone: {sum(1 for r in self.results if r['status'] in ('changed', 'unchanged'))} "
                         f"object(s) back to their state before {inc.id}, {len(self.drift)} drift left as is"
                         + (f"; {len(self.irreversible)} token revocation(s) cannot be undone"
                            if self.irreversible else ""))
        else:
            lines.append(f"completed: {sum(1 for r in self.results if r['status'] == 'changed')} more changed, "
                         f"{len(self.drift)} drift left as is; {inc.id} is closed "
                         f"(`moodleops incident reinstate {inc.id}` undoes it)")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
