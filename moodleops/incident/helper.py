"""Typed access to moodleops/php/incident.php: one PHP process per call, whatever
the batch size; an apply streams one acknowledgement per chunk as it lands."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from moodleops import membership, moodledb
from moodleops.inventory import Inventory, School
from moodleops.moodle import JSON_MARKER, MoodleCLI, MoodleError
from moodleops.site import SiteError

HELPER = "incident"
ACK_MARKER = "MOODLEOPS-ACK: "
PROTOCOL = 2   # MOODLEOPS_INCIDENT_PROTOCOL of incident.php


@dataclass(frozen=True)
class MoodleUser:
    id: int
    username: str
    suspended: int
    timemodified: int
    siteadmin: bool
    guest: bool
    account_type: str | None
    messaging_blocked: bool
    schools: tuple[str, ...]
    tokens: int = 0          # web-service tokens

    @classmethod
    def of(cls, row: dict[str, Any]) -> MoodleUser:
        return cls(id=int(row["id"]), username=str(row["username"]), suspended=int(row["suspended"]),
                   timemodified=int(row["timemodified"]), siteadmin=bool(row["siteadmin"]),
                   guest=bool(row["guest"]), account_type=row.get("account_type"),
                   messaging_blocked=bool(row["messaging_blocked"]), schools=tuple(row["schools"]),
                   tokens=int(row.get("tokens", 0)))


@dataclass(frozen=True)
class Snapshot:
    """What Moodle holds now for the objects a plan is about."""

    users: tuple[MoodleUser, ...]
    missing_usernames: tuple[str, ...]
    school_problems: dict[str, str]          # code -> why its members could not be listed
    categories: dict[str, dict[str, Any] | None]
    platform: dict[str, Any]
    account_type_field_exists: bool

    def user_by_name(self) -> dict[str, MoodleUser]:
        return {u.username: u for u in self.users}


@dataclass(frozen=True)
class IncidentHelper:
    moodle: MoodleCLI
    inv: Inventory
    script: str = HELPER    # a path for tests that run an uninstalled copy

    def _memberships(self) -> dict[str, dict[str, Any]]:
        """Every school's members and problem, from the one membership definition
        (moodleops.membership), so each user comes back with all their schools."""
        site = self.moodle.site
        rule = membership.rule_of(self.inv.platform)
        try:
            with moodledb.connect(moodledb.target_of(site, primary=True), application="moodleops-incident") as conn:
                found = membership.members(conn, site.db_prefix, rule, self.inv.schools)
                problems = membership.problems(conn, site.db_prefix, rule, self.inv.schools)
        except (moodledb.MoodleDBError, SiteError) as exc:
            raise MoodleError(f"school membership cannot be read: {exc}") from None
        return {code: {"problem": problems.get(code), "members": sorted(ids)} for code, ids in found.items()}

    def read(self, *, expand: tuple[School, ...] = (), usernames: tuple[str, ...] = (),
             userids: tuple[int, ...] = (), categories: tuple[str, ...] = (),
             hosted: bool = False) -> Snapshot:
        rules = self.inv.platform.accounts
        answer = self.moodle.tool(self.script, payload={
            "action": "read",
            "memberships": self._memberships(),
            "account_type_field": rules.account_type_field,
            "expand_schools": [s.code for s in expand],
            "usernames": list(usernames),
            "userids": list(userids),
            "categories": list(categories),
            "hosted_types": list(rules.hosted_types) if hosted else [],
        })
        return Snapshot(
            users=tuple(MoodleUser.of(r) for r in answer["users"]),
            missing_usernames=tuple(answer["missing_usernames"]),
            school_problems={code: s["problem"] for code, s in answer["schools"].items() if s["problem"]},
            categories=dict(answer["categories"] or {}),
            platform=dict(answer["platform"]),
            account_type_field_exists=bool(answer["account_type_field_exists"]),
        )

    def apply(self, changes: list[dict[str, Any]], *, dry_run: bool, force: bool = False) -> list[dict[str, Any]]:
        """Results in the order of `changes`: {kind, id, before, after, status}; status is
        changed | would_change | unchanged | drift | gone."""
        if not changes:
            return []
        answer = self.moodle.tool(self.script, payload={
            "action": "apply", "changes": changes, "dry_run": dry_run, "force": force})
        results: list[dict[str, Any]] = answer["results"]
        return results

    def state(self, objects: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """What Moodle holds now for each {kind, id}, in the journal's shape (None: gone)."""
        if not objects:
            return []
        answer = self.moodle.tool(self.script, payload={
            "action": "state", "objects": [{"kind": o["kind"], "id": o["id"]} for o in objects]})
        states: list[dict[str, Any] | None] = answer["states"]
        return states

    def apply_chunks(self, changes: list[dict[str, Any]], *, chunk_size: int, force: bool,
                     lock: dict[str, Any], fault: dict[str, Any] | None = None,
                     on_start: Callable[[], None] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Apply `changes` in one PHP process, chunk by chunk, yielding each chunk's
        results as PHP acknowledges it (it has applied the chunk when it says so).
        PHP holds the platform writer lock (`lock`, from moodleops.platform.lock)
        while it applies, and stops between chunks if our platform lock is gone."""
        payload = {"action": "apply", "changes": changes, "dry_run": False, "force": force,
                   "chunk_size": chunk_size, "lock": lock, "fault": fault}
        script = self.script if "/" in self.script else str(self.moodle.site.lib_dir / "php" / f"{self.script}.php")
        argv = self.moodle._as_web_user([self.moodle.site.php, script, str(self.moodle.site.config_php)])
        with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                    bufsize=1)
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(payload))
                proc.stdin.close()
                if on_start:
                    on_start()
                done = False
                for line in proc.stdout:
                    if line.startswith(ACK_MARKER):
                        yield list(json.loads(line[len(ACK_MARKER):])["results"])
                    elif line.startswith(JSON_MARKER):
                        done = True
                        if json.loads(line[len(JSON_MARKER):]).get("protocol") != PROTOCOL:
                            raise MoodleError(f"the installed helper {script} is another version than this "
                                              "moodleops (no chunk acknowledgements): install this one "
                                              "(`moodleops platform up`)")
                code = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if code != 0 or not done:
                err.seek(0)
                detail = err.read().strip()[-2000:]
                raise MoodleError(f"{self.script}.php apply exited {code}: {detail or 'no message'}")
