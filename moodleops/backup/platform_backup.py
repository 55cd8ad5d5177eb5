"""One platform backup run: database dump (multipart, resumable), filedir blobs
(incremental), the other moodledata folders (tar), then the manifest.

Order matters for consistency: the dump is taken first, filedir is listed
after it. Moodle writes a file's content before its database row, so every
row in the dump has its content on disk by the time of the listing, unless
Moodle deleted it meanwhile: then it is in trashdir (taken from there), or,
if trash was emptied too, already in the bucket from an earlier run. Every
contenthash the dump's files table names is looked up in that order, and the
manifest says what was checked and what (if anything) could not be found."""

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

from moodleops.backup import database, manifest, markers, sealing
from moodleops.backup.blobs import BlobReport, bucket_blobs, scan_filedir, upload_missing
from moodleops.backup.config import BackupConfig
from moodleops.backup.multipart import upload_file
from moodleops.backup.progress import human_bytes, human_seconds
from moodleops.backup.s3 import BackupError, ensure_bucket
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
            raise BackupError(f"another backup, prune or restore holds {work_dir(site) / 'lock'}") from exc
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
    missing: list[str]

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
              + ", ".join(b.corrupt[:5])] if b.corrupt else []) \
          + ([f"  WARNING: {len(self.missing)} content(s) the dump references are nowhere (not in filedir, trashdir "
              f"or the bucket; deleted and purged during the run?): " + ", ".join(self.missing[:5])]
             if self.missing else [])


EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()   # directories' contenthash: no content to keep


def run_backup(s3: Any, cfg: BackupConfig, inv: Inventory, site: Site, *, fresh: bool = False,
               on_dump_part: Callable[[int], None] | None = None,
               after_dump: Callable[[], None] | None = None) -> RunReport:
    """Back the platform up. An interrupted run is resumed by the next one (same
    id, same dump, parts already in S3 not sent again) unless `fresh`.
    `after_dump` runs between the dump and the filedir listing (tests)."""
    started = time.monotonic()
    began = datetime.now(UTC)
    ensure_bucket(s3, cfg)
    key = sealing.load_key(site)      # before any work: a run that cannot seal its manifest is useless
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
        # Before anything is listed: a prune elsewhere now keeps every blob.
        markers.begin_backup(s3, cfg, bid)
        print(f"backup {bid}: dumping database {site.db_name} ...", file=sys.stderr, flush=True)
        database.dump(site, inv, Path(state["dump"]))
        run_file.write_text(json.dumps(state))
    else:
        markers.begin_backup(s3, cfg, state["id"])
    bid = state["id"]
    rd = wd / "runs" / bid
    dump_key = cfg.key("db", f"{bid}.dump")
    if after_dump is not None:
        after_dump()
    up = upload_file(s3, cfg, Path(state["dump"]), dump_key, rd / "dump-upload.json",
                     progress_label="database dump", on_part=on_dump_part, metadata={"backup-id": bid})

    filedir, trashdir = site.dataroot / "filedir", site.dataroot / "trashdir"
    referenced = set(database.referenced_contenthashes(Path(state["dump"]), site.db_prefix))
    referenced.discard(EMPTY_SHA1)
    local = scan_filedir(filedir)                       # listed after the dump
    trash_all = scan_filedir(trashdir)
    # Referenced by the dump but deleted since: Moodle moved it to trashdir.
    trash = {h: s for h, s in trash_all.items() if h in referenced and h not in local}
    remote = bucket_blobs(s3, cfg)
    blobs = upload_missing(s3, cfg, filedir, local, remote, trashdir=trashdir)
    blobs_trash = upload_missing(s3, cfg, trashdir, trash, remote)
    blobs.uploaded += blobs_trash.uploaded
    blobs.uploaded_bytes += blobs_trash.uploaded_bytes
    blobs.corrupt += blobs_trash.corrupt
    sizes = {**remote, **trash, **local}
    lost = set(blobs.vanished) | set(blobs_trash.vanished) | set(blobs.corrupt)
    stored = (set(local) | set(trash) | set(remote)) - lost | (lost & set(remote))
    if markers.prune_overlapped(s3, cfg, began):
        # A prune elsewhere may have deleted a blob this run counted as stored.
        again = bucket_blobs(s3, cfg)
        stored = {h for h in stored if h in again or h in local or h in trash}
        resend = {h: sizes[h] for h in (set(local) | set(trash)) & referenced if h not in again and h not in lost}
        if resend:
            upload_missing(s3, cfg, filedir, resend, again, trashdir=trashdir)
    missing = sorted(referenced - stored)
    needed = {h: sizes.get(h, 0) for h in (referenced | set(local)) if h in stored}
    checks = {
        "listing": "filedir and trashdir listed after the database dump",
        "referenced_by_dump": len(referenced),
        "in_filedir": len(referenced & set(local)),
        "from_trashdir": len(set(trash) - lost),
        "only_in_bucket": len((referenced - set(local) - set(trash)) & stored),
        "vanished_during_run": sorted(set(blobs.vanished) | set(blobs_trash.vanished))[:1000],
        "missing": missing[:1000],
        "missing_count": len(missing),
        "prune_overlapped": markers.prune_overlapped(s3, cfg, began),
    }

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
        "checks": checks,
        # config.php holds the database password: sealed client-side, under a key
        # that is not in the bucket (sealing.py).
        "secrets": sealing.seal(key, {"config_php": config_php}),
        "report": {"blobs_uploaded": blobs.uploaded, "blobs_uploaded_bytes": blobs.uploaded_bytes,
                   "blobs_skipped": blobs.skipped, "blobs_corrupt_on_disk": blobs.corrupt},
    }
    mkey = manifest.put(s3, cfg, m)
    markers.end_backup(s3, cfg, bid)
    run_file.unlink(missing_ok=True)
    shutil.rmtree(rd, ignore_errors=True)
    return RunReport(id=bid, manifest_key=mkey, missing=missing, resumed=resumed, db_bytes=up.size, db_parts_resumed=up.parts_resumed,
                     tar_bytes=tar_up.size, blobs=blobs, seconds=time.monotonic() - started)


def report_json(rep: RunReport) -> dict[str, Any]:
    d = asdict(rep)
    d["blobs"]["vanished"] = len(rep.blobs.vanished)
    return d
