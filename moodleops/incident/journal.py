"""The write-ahead journal of the incident runbooks.

Append-only JSON lines on the host (<state_dir>/incidents/journal.jsonl), each
line also appended to the operator's copy. Every change to Moodle is preceded
by its *intent* (every object with its state before and the state planned
after), acknowledged chunk by chunk as it lands, and ended by a *close*
record. An intent without a close is an incomplete incident: nothing new
starts until `moodleops incident recover` has resolved it.

Each record carries `prev`, the hash of the previous record, and `hash`, its
own (sha256 over its canonical JSON without `hash`): `moodleops incident
verify` detects an edited, removed or inserted line. Every write is checked
for short writes and fsynced, the operator's copy included.

GDPR: records carry Moodle ids and usernames, never names or e-mail
addresses. Incidents and their holds are derived by reading the journal back:
there is no second source of truth to drift from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.incident.errors import IncidentError, JournalError

JOURNAL_NAME = "journal.jsonl"
DEFAULT_COPY_DIR = Path("~/.local/state/moodleops")
GENESIS = "0" * 64
VERSION = 2
RELEASING = ("changed", "unchanged", "gone")   # a restore with this result lets go of the hold
HOLDING_OPS = ("change", "hold")


def new_incident_id(now: datetime | None = None) -> str:
    """Human-readable and sortable: INC-20261124-143012-ab12 (UTC)."""
    now = now or datetime.now(UTC)
    return f"INC-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


Key = tuple[str, int]


def key_of(obj: dict[str, Any]) -> Key:
    return str(obj["kind"]), int(obj["id"])


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class Incident:
    """One intent and what became of it: chunk acknowledgements, recovery, close."""

    intent: dict[str, Any]
    results: dict[Key, dict[str, Any]] = field(default_factory=dict)   # per applied object, latest wins
    undone: dict[Key, dict[str, Any]] = field(default_factory=dict)    # recover --undo results
    close: dict[str, Any] | None = None
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    reinstatements: list[Incident] = field(default_factory=list)
    chunks: int = 0

    @property
    def id(self) -> str:
        return str(self.intent["incident"])

    @property
    def action(self) -> str:
        return str(self.intent.get("action"))

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.intent.get("entries", []))

    @property
    def complete(self) -> bool:
        return self.close is not None

    @property
    def outcome(self) -> str | None:
        return None if self.close is None else str(self.close.get("outcome"))

    def held(self) -> list[dict[str, Any]]:
        """Entries whose object this incident holds (changed it, or joined a hold on it),
        before any reinstatement."""
        if self.outcome != "done" or self.action == "reinstate":
            return []
        out = []
        for e in self.entries:
            if e.get("irreversible") or e.get("op") not in HOLDING_OPS:
                continue
            if e["op"] == "change" and self.results.get(key_of(e), {}).get("status") != "changed":
                continue
            out.append(e)
        return out

    def released(self) -> set[Key]:
        done: set[Key] = set()
        for r in self.reinstatements:
            if r.outcome != "done":
                continue
            for e in r.entries:
                k = key_of(e)
                if e.get("op") == "release" or r.results.get(k, {}).get("status") in RELEASING:
                    done.add(k)
        return done

    def pending(self) -> list[dict[str, Any]]:
        """What this incident still holds: not yet released by a reinstatement."""
        gone = self.released()
        return [e for e in self.held() if key_of(e) not in gone]

    @property
    def state(self) -> str:
        if not self.complete:
            return "INCOMPLETE"
        if self.outcome == "undone":
            return "undone"
        if self.action == "reinstate":
            return f"undoes {self.intent.get('reinstates')}"
        if not self.held():
            return "done" if self.changed_count() else "no-change"
        if not self.reinstatements or all(r.outcome != "done" for r in self.reinstatements):
            return "open"
        return "reinstated" if not self.pending() else "partly-reinstated"

    def changed_count(self) -> int:
        return sum(1 for r in self.results.values() if r.get("status") == "changed")


@dataclass
class Holds:
    """Who holds which object now, and the state moodleops last left it in."""

    holders: dict[Key, list[tuple[str, dict[str, Any]]]]   # key -> [(incident id, entry)]
    last_state: dict[Key, dict[str, Any]]
    runbooks: dict[str, tuple[str, Any]] = field(default_factory=dict)   # incident id -> (action, scope)

    def same_runbook(self, holders: list[tuple[str, dict[str, Any]]], action: str, scope: Any) -> str | None:
        """The holder that is this very runbook run before (same action and scope), if any."""
        return next((i for i, _ in holders if self.runbooks.get(i) == (action, scope)), None)

    def of(self, key: Key, *, besides: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [(i, e) for i, e in self.holders.get(key, []) if i != besides]


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

    # -- writing ---------------------------------------------------------------------

    def _last_hash(self) -> str:
        """Hash of the last line as written (read from the end: the journal only grows)."""
        if not self.path.is_file():
            return GENESIS
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            tail = b""
            while end > 0:
                step = min(end, 1 << 20)
                end -= step
                fh.seek(end)
                tail = fh.read(step) + tail
                lines = [ln for ln in tail.split(b"\n") if ln.strip()]
                if len(lines) >= 2 or (end == 0 and lines):
                    return hashlib.sha256(lines[-1]).hexdigest()
        return GENESIS

    def append(self, record: dict[str, Any]) -> list[str]:
        """Append one record to the host journal (checked, fsynced) -- a failure there
        raises JournalError -- then to the operator's copy; returns warnings (a failed
        copy does not undo what Moodle did)."""
        record = {"v": VERSION, **record, "prev": self._last_hash()}
        record["hash"] = record_hash(record)
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            _durable_append(self.path, line, dir_mode=0o750, file_mode=0o640)
        except OSError as exc:
            raise JournalError(f"journal {self.path} not written ({exc}); check the disk and its "
                               "permissions") from None
        warnings: list[str] = []
        if self.copy_path is not None:
            try:
                _durable_append(self.copy_path, line, dir_mode=0o700, file_mode=0o600)
            except OSError as exc:
                warnings.append(f"journal copy {self.copy_path} not written: {exc}")
        return warnings

    # -- reading ---------------------------------------------------------------------

    @staticmethod
    def _lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
        if not path.is_file():
            return
        with open(path, encoding="utf-8") as fh:
            for n, raw in enumerate(fh, 1):
                line = raw.rstrip("\n")
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise JournalError(f"{path}:{n}: not a JSON record ({exc.msg}); the journal is "
                                       "append-only: see `moodleops incident verify`") from None
                if not isinstance(rec, dict):
                    raise JournalError(f"{path}:{n}: not a JSON object; see `moodleops incident verify`")
                yield n, line, rec

    def records(self) -> Iterator[dict[str, Any]]:
        for _n, _line, rec in self._lines(self.path):
            yield rec

    def incidents(self) -> dict[str, Incident]:
        found: dict[str, Incident] = {}
        for rec in self.records():
            inc_id = str(rec.get("incident"))
            kind = rec.get("type")
            if rec.get("v", 1) == 1:
                found[inc_id] = _legacy(rec)
            elif kind == "intent":
                found[inc_id] = Incident(rec)
            elif inc_id in found:
                inc = found[inc_id]
                if kind == "chunk":
                    inc.chunks += 1
                    for r in rec.get("results", []):
                        (inc.undone if rec.get("phase") == "undo" else inc.results)[key_of(r)] = r
                elif kind == "recover":
                    inc.recoveries.append(rec)
                    for r in rec.get("adopted", []):
                        inc.results[key_of(r)] = r
                elif kind == "close":
                    inc.close = rec
        for inc in found.values():
            target = found.get(str(inc.intent.get("reinstates")))
            if inc.action == "reinstate" and target is not None:
                target.reinstatements.append(inc)
        return found

    def incident(self, incident_id: str) -> Incident:
        found = self.incidents()
        if incident_id not in found:
            known = sorted(found)[-3:]
            hint = f" (latest: {', '.join(known)})" if known else " (the journal is empty)"
            raise IncidentError(f"incident {incident_id!r} is not in the journal {self.path}{hint}; "
                                "see `moodleops incident list`")
        return found[incident_id]

    def incomplete(self) -> list[Incident]:
        return [i for i in self.incidents().values() if not i.complete]

    def holds(self, incidents: dict[str, Incident] | None = None) -> Holds:
        incidents = incidents if incidents is not None else self.incidents()
        holders: dict[Key, list[tuple[str, dict[str, Any]]]] = {}
        last: dict[Key, dict[str, Any]] = {}
        for inc in incidents.values():   # journal order
            for e in inc.entries:
                if e.get("op") == "hold" and inc.outcome == "done":
                    last[key_of(e)] = dict(e.get("before") or {})
            for k, r in inc.results.items():
                if r.get("status") in ("changed", "unchanged") and r.get("after") is not None:
                    last[k] = dict(r["after"])
            for k, r in inc.undone.items():
                if r.get("after") is not None:
                    last[k] = dict(r["after"])
            if inc.action != "reinstate":
                for e in inc.pending():
                    holders.setdefault(key_of(e), []).append((inc.id, e))
        runbooks = {i: (inc.action, inc.intent.get("scope")) for i, inc in incidents.items()}
        return Holds(holders, last, runbooks)


def _legacy(rec: dict[str, Any]) -> Incident:
    """A v1 record (before the write-ahead journal): one line per finished action."""
    entries, results = [], {}
    for c in rec.get("changes", []):
        op = "restore" if rec.get("action") == "reinstate" else "change"
        entries.append({"kind": c["kind"], "id": c["id"], "label": c.get("label", ""), "op": op,
                        "before": c.get("before"), "origin": c.get("before"), "to": {}, "expect": {}})
        results[key_of(c)] = c
    intent = {**rec, "type": "intent", "entries": entries}
    return Incident(intent, results=results, close={"outcome": "done", "legacy": True})


def _durable_append(path: Path, data: bytes, *, dir_mode: int, file_mode: int) -> None:
    """Append all of `data` (a short write is retried, then an error) and fsync it;
    a new file's directory is fsynced too, so the file itself survives a crash."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(f"short write to {path}: {len(data) - len(view)} of {len(data)} bytes")
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass
class VerifyReport:
    path: Path
    records: int = 0
    legacy: int = 0
    problems: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)


def verify_file(path: Path) -> VerifyReport:
    """Check the hash chain of one journal file: every record's own hash, and its
    `prev` against the line before (a removed, inserted or edited line breaks it)."""
    rep = VerifyReport(path)
    if not path.is_file():
        rep.problems.append(f"{path}: no such file")
        return rep
    prev_line_hash = GENESIS
    with open(path, "rb") as fh:
        data = fh.read()
    if data and not data.endswith(b"\n"):
        rep.problems.append(f"{path}: the last line is cut short (a write that did not finish)")
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        rep.records += 1
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rep.problems.append(f"{path}:{n}: not a JSON record")
            prev_line_hash = hashlib.sha256(raw).hexdigest()
            continue
        if not isinstance(rec, dict):
            rep.problems.append(f"{path}:{n}: not a JSON object")
        elif rec.get("v", 1) == 1 and "hash" not in rec:
            rep.legacy += 1
        else:
            if rec.get("hash") != record_hash(rec):
                rep.problems.append(f"{path}:{n}: record {rec.get('incident')} {rec.get('type')} was altered "
                                    "(its hash does not match its content)")
            if rec.get("prev") != prev_line_hash:
                rep.problems.append(f"{path}:{n}: the chain is broken before this line (a line was "
                                    "removed, inserted or altered above)")
        prev_line_hash = hashlib.sha256(raw).hexdigest()
        rep.hashes.append(prev_line_hash)   # of the line as written: two copies must agree byte for byte
    return rep
