"""One platform backup run: database dump (multipart, resumable), filedir blobs
(incremental), the other moodledata folders (tar), then the manifest.

Order matters for consistency: the dump is taken first, filedir is scanned
after it. Moodle writes a file's content before its database row, so every
row in the dump has its content on disk by the time of the scan; content that
Moodle moved to trashdir in between is taken from there."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.backup import database, manifest
from moodleops.backup.blobs import BlobReport, bucket_blobs, scan_filedir, upload_missing
from moodleops.backup.config import BackupConfig
from moodleops.backup.multipart import upload_file
from moodleops.backup.progress import human_bytes, human_seconds
from moodleops.backup.s3 import BackupError, ensure_bucket
from moodleops.errors import BusyError
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site


def work_dir(site: Site) -> Path:
    return site.state_dir / "backup"


@contextmanager
def backup_lock(site: Site) -> Iterator[None]:
    """One backup, prune or restore at a time on this host: pruning while a run
    has skipped a blob "already in the bucket" would lose that blob."""
    work_dir(site).mkdir(parents=True, exist_ok=True)
    with open(work_dir(site) / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BusyError(f"another backup, prune or restore holds {work_dir(site) / 'lock'}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _tar_moodledata(dataroot: Path, excludes: tuple[str, ...], out: Path) -> list[str]:
    included = sorted(p.name for p in dataroot.iterdir() if p.name not in excludes)
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        for name in included:
            tar.add(dataroot / name, arcname=name)
    return included


@dataclass
class RunReport:
    id: str
    manifest_key: str
    resumed: bool
    db_bytes: int
    db_parts_resumed: int
    tar_bytes: int
    blobs: BlobReport
    seconds: float

    def lines(self) -> list[str]:
        b = self.blobs
        return [
            f"backup {self.id}{' (resumed)' if self.resumed else ''}: manifest {self.manifest_key}",
            f"  database dump: {human_bytes(self.db_bytes)}"
            + (f" ({self.db_parts_resumed} part(s) already sent by the interrupted run)" if self.db_parts_resumed else ""),
            (f"  filedir: {b.total} blobs, {human_bytes(b.total_bytes)}; sent {b.uploaded} ({human_bytes(b.uploaded_bytes)}),"
            f" skipped {b.skipped} already in the bucket ({human_bytes(b.skipped_bytes)}) in {human_seconds(b.seconds)}"),
            f"  other moodledata folders: {human_bytes(self.tar_bytes)} (tar.gz)",
            f"  duration: {human_seconds(self.seconds)}",
        ] + ([f"  WARNING: {len(b.corrupt)} pool file(s) do not match their sha1 and were NOT backed up: "
              + ", ".join(b.corrupt[:5])] if b.corrupt else [])


def run_backup(s3: Any, cfg: BackupConfig, inv: Inventory, site: Site, *, fresh: bool = False,
               on_dump_part: Callable[[int], None] | None = None) -> RunReport:
    """Back the platform up. An interrupted run is resumed by the next one (same
    id, same dump, parts already in S3 not sent again) unless `fresh`."""
    started = time.monotonic()
    ensure_bucket(s3, cfg)
    wd = work_dir(site)
    run_file = wd / "run.json"
    state: dict[str, Any] | None = None
    if run_file.exists() and not fresh:
        state = json.loads(run_file.read_text())
        if not Path(state["dump"]).exists():
            state = None
    resumed = state is not None
    if state is None:
        if run_file.exists():
            old = json.loads(run_file.read_text())
            shutil.rmtree(wd / "runs" / old["id"], ignore_errors=True)
        bid = manifest.new_id()
        rd = wd / "runs" / bid
        rd.mkdir(parents=True, exist_ok=True)
        os.chmod(rd, 0o700)  # the dump holds every user's data
        probe = MoodleCLI(site).probe()
        if not probe.get("installed"):
            raise BackupError(f"Moodle at {site.current_link} is not installed: nothing to back up")
        state = {"id": bid, "dump": str(rd / "db.dump"), "started": datetime.now(UTC).isoformat(),
                 "probe": {"version": probe["version"], "release": probe["release"],
                           "plugins": {c: p.get("db") for c, p in probe.get("plugins", {}).items()}}}
        print(f"backup {bid}: dumping database {site.db_name} ...", file=sys.stderr, flush=True)
        database.dump(site, inv, Path(state["dump"]))
        run_file.write_text(json.dumps(state))
    bid = state["id"]
    rd = wd / "runs" / bid
    dump_key = cfg.key("db", f"{bid}.dump")
    up = upload_file(s3, cfg, Path(state["dump"]), dump_key, rd / "dump-upload.json",
                     progress_label="database dump", on_part=on_dump_part, metadata={"backup-id": bid})
    _mark(run_file, state, "dump_uploaded")

    filedir = site.dataroot / "filedir"
    local = scan_filedir(filedir)
    # Content moved to trash after the dump may still be referenced by it.
    trash = {h: s for h, s in _scan_trash(site.dataroot / "trashdir").items() if h not in local}
    blobs = upload_missing(s3, cfg, filedir, local, bucket_blobs(s3, cfg))
    if trash:
        blobs_trash = upload_missing(s3, cfg, site.dataroot / "trashdir", trash, bucket_blobs(s3, cfg))
        blobs.uploaded += blobs_trash.uploaded
        blobs.uploaded_bytes += blobs_trash.uploaded_bytes
    _mark(run_file, state, "blobs_uploaded")
    needed = {h: s for h, s in {**trash, **local}.items() if h not in blobs.vanished and h not in blobs.corrupt}

    tar_path = rd / "moodledata.tar.gz"
    included = _tar_moodledata(site.dataroot, cfg.moodledata_excludes, tar_path)
    tar_key = cfg.key("moodledata", f"{bid}.tar.gz")
    tar_up = upload_file(s3, cfg, tar_path, tar_key, rd / "tar-upload.json", progress_label="moodledata folders")

    config_php = site.config_php.read_text() if site.config_php.exists() else ""
    m = {
        "format": manifest.FORMAT, "id": bid, "env": inv.env, "started": state["started"],
        "finished": datetime.now(UTC).isoformat(),
        "site": {"wwwroot": site.wwwroot, "dataroot": str(site.dataroot), "db_name": site.db_name},
        "moodle": state["probe"],
        "database": {"key": dump_key, "size": up.size, "sha256": up.sha256, "format": "pg_dump -Fc -Z 6"},
        "moodledata": {"key": tar_key, "size": tar_up.size, "sha256": tar_up.sha256, "included": included,
                       "excluded": list(cfg.moodledata_excludes)},
        "blobs": {"count": len(needed), "bytes": sum(needed.values()), "sha1": sorted(needed)},
        # Holds the database password: the manifest is encrypted at rest (SSE) and
        # readable only with the bucket's credentials.
        "config_php": config_php,
        "report": {"blobs_uploaded": blobs.uploaded, "blobs_uploaded_bytes": blobs.uploaded_bytes,
                   "blobs_skipped": blobs.skipped, "blobs_corrupt_on_disk": blobs.corrupt},
    }
    key = manifest.put(s3, cfg, m)
    run_file.unlink(missing_ok=True)
    shutil.rmtree(rd, ignore_errors=True)
    return RunReport(id=bid, manifest_key=key, resumed=resumed, db_bytes=up.size, db_parts_resumed=up.parts_resumed,
                     tar_bytes=tar_up.size, blobs=blobs, seconds=time.monotonic() - started)


def _mark(run_file: Path, state: dict[str, Any], step: str) -> None:
    # What an interrupted run had finished, for its one-line report (`backup run` resumes anyway).
    state[step] = True
    run_file.write_text(json.dumps(state))


def _scan_trash(trashdir: Path) -> dict[str, int]:
    # Same layout as filedir (trashdir/xx/yy/<sha1>).
    return scan_filedir(trashdir)


def report_json(rep: RunReport) -> dict[str, Any]:
    d = asdict(rep)
    d["blobs"]["vanished"] = len(rep.blobs.vanished)
    return d
