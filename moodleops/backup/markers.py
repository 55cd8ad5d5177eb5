"""Markers in the bucket that let backups and prunes running on different
hosts see each other (the host lock only serialises one host):

  markers/inprogress/<id>.json  written by a backup before it lists the bucket,
                                removed after its manifest: prune deletes no
                                blob while a fresh one exists;
  markers/prune.json            the window of the last prune (started,
                                finished): a backup that overlapped it checks
                                again, before its manifest, that every blob it
                                skipped as "already stored" is still there."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moodleops.backup.config import BackupConfig
from moodleops.backup.s3 import delete_keys, get_bytes, list_keys, put_bytes

# A backup older than this without finishing was killed: its marker no longer
# blocks prunes (the next run resumes it and writes a fresh one).
INPROGRESS_MAX_AGE = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(UTC)


def inprogress_key(cfg: BackupConfig, backup_id: str) -> str:
    return cfg.key("markers", "inprogress", backup_id + ".json")


def begin_backup(s3: Any, cfg: BackupConfig, backup_id: str) -> None:
    body = {"id": backup_id, "host": socket.gethostname(), "pid": os.getpid(), "since": _now().isoformat()}
    put_bytes(s3, cfg, inprogress_key(cfg, backup_id), json.dumps(body).encode(), content_type="application/json")


def end_backup(s3: Any, cfg: BackupConfig, backup_id: str) -> None:
    delete_keys(s3, cfg, [inprogress_key(cfg, backup_id)])


@dataclass(frozen=True)
class Marker:
    backup_id: str
    written: datetime

    def fresh(self, now: datetime) -> bool:
        return now - self.written < INPROGRESS_MAX_AGE


def backups_in_progress(s3: Any, cfg: BackupConfig) -> list[Marker]:
    prefix = cfg.key("markers", "inprogress", "")
    return sorted((Marker(k[len(prefix):].removesuffix(".json"), meta["last_modified"])
                   for k, meta in list_keys(s3, cfg, prefix).items()), key=lambda m: m.backup_id)


def _prune_key(cfg: BackupConfig) -> str:
    return cfg.key("markers", "prune.json")


def begin_prune(s3: Any, cfg: BackupConfig) -> datetime:
    started = _now()
    put_bytes(s3, cfg, _prune_key(cfg), json.dumps({"started": started.isoformat(), "finished": None,
                                                    "host": socket.gethostname()}).encode(),
              content_type="application/json")
    return started


def end_prune(s3: Any, cfg: BackupConfig, started: datetime) -> None:
    put_bytes(s3, cfg, _prune_key(cfg), json.dumps({"started": started.isoformat(), "finished": _now().isoformat(),
                                                    "host": socket.gethostname()}).encode(),
              content_type="application/json")


def last_prune(s3: Any, cfg: BackupConfig) -> dict[str, Any] | None:
    """{started, finished (None: running or killed), host} of the last prune, if any."""
    if not list_keys(s3, cfg, _prune_key(cfg)):
        return None
    out: dict[str, Any] = json.loads(get_bytes(s3, cfg, _prune_key(cfg)))
    return out


def prune_overlapped(s3: Any, cfg: BackupConfig, since: datetime) -> bool:
    """Whether a prune ran (or is running, or was killed) at any time after `since`."""
    last = last_prune(s3, cfg)
    if last is None:
        return False
    if last.get("finished") is None:
        return True
    return datetime.fromisoformat(last["finished"]) >= since
