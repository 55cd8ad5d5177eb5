"""The audit journal and the runbook lock.

The journal is append-only JSON lines on the host (<state_dir>/incidents/
journal.jsonl), one record per applied action, each line also appended to the
operator's copy. GDPR: records carry Moodle ids and usernames, never names or
e-mail addresses. Incidents are derived by reading the journal back: there is
no second source of truth to drift from it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TextIO

from moodleops.incident.errors import IncidentError, LockBusy

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "runbook.lock"
DEFAULT_COPY_DIR = Path("~/.local/state/moodleops")
RESTORED = ("changed", "unchanged", "gone")   # statuses meaning "nothing left to undo"


def new_incident_id(now: datetime | None = None) -> str:
    """Human-readable and sortable: INC-20261124-143012-ab12 (UTC)."""
    now = now or datetime.now(UTC)
    return f"INC-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def change_key(change: dict[str, Any]) -> tuple[str, int]:
    return str(change["kind"]), int(change["id"])


@dataclass
class Incident:
    """One journalled action and the reinstatements that undid it (partly or wholly)."""

    record: dict[str, Any]
    reinstatements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.record["incident"])

    def pending(self) -> list[dict[str, Any]]:
        """Changes of this incident not yet undone (drift left as is stays pending)."""
        done = {change_key(c) for r in self.reinstatements for c in r.get("changes", [])
                if c.get("status") in RESTORED}
        return [c for c in self.record.get("changes", [])
                if c.get("status") == "changed" and change_key(c) not in done]

    @property
    def state(self) -> str:
        if not any(c.get("status") == "changed" for c in self.record.get("changes", [])):
            return "no-change"
        if not self.reinstatements:
            return "open"
        return "reinstated" if not self.pending() else "partly-reinstated"


class Journal:
    def __init__(self, host_dir: Path, copy_dir: Path | None, env: str) -> None:
        self.host_dir = host_dir
        self.copy_dir = copy_dir.expanduser() if copy_dir is not None else None
        self.env = env

    @property
    def path(self) -> Path:
        return self.host_dir / JOURNAL_NAME

    @property
    def copy_path(self) -> Path | None:
        return self.copy_dir / f"incidents-{self.env}.jsonl" if self.copy_dir else None

    def append(self, record: dict[str, Any]) -> list[str]:
        """Append one record to the host journal (fsynced), then to the operator's
        copy; returns warnings (a failed copy does not undo what Moodle did)."""
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        self.host_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        warnings: list[str] = []
        if self.copy_path is not None:
            try:
                self.copy_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with open(self.copy_path, "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                warnings.append(f"journal copy {self.copy_path} not written: {exc}")
        return warnings

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise IncidentError(f"{self.path}:{n}: not a JSON record ({exc.msg}); "
                                            "the journal is append-only, repair it by hand") from None

    def incidents(self) -> dict[str, Incident]:
        found: dict[str, Incident] = {}
        for rec in self.records():
            if rec.get("action") == "reinstate":
                target = found.get(str(rec.get("reinstates")))
                if target is not None:
                    target.reinstatements.append(rec)
                found[str(rec["incident"])] = Incident(rec)
            else:
                found[str(rec["incident"])] = Incident(rec)
        return found

    def incident(self, incident_id: str) -> Incident:
        found = self.incidents()
        if incident_id not in found:
            known = sorted(found)[-3:]
            hint = f" (latest: {', '.join(known)})" if known else " (the journal is empty)"
            raise IncidentError(f"incident {incident_id!r} is not in the journal {self.path}{hint}; "
                                "see `moodleops incident list`")
        return found[incident_id]


class RunbookLock:
    """One runbook at a time on a host: an exclusive, non-blocking flock held for
    the whole plan-apply-journal sequence. The kernel drops it if we die."""

    def __init__(self, host_dir: Path, what: str) -> None:
        self.path = host_dir / LOCK_NAME
        self.what = what
        self._fh: TextIO | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockBusy(f"another runbook holds {self.path} ({holder}); wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}: {self.what}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.truncate(0)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
