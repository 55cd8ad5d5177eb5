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
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moodleops.backup import database, manifest, markers, sealing
from moodleops.backup.blobs import BlobReport, iter_filedir, send_blobs
from moodleops.backup.config import BackupConfig
from moodleops.backup.index import BlobIndex
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
               after_dump: Callable[[], None] | None = None,
               before_manifest: Callable[[], None] | None = None) -> RunReport:
    """Back the platform up. An interrupted run is resumed by the next one (same
    id, same dump, parts already in S3 not sent again) unless `fresh`.
    `after_dump` runs between the dump and the filedir listing, `before_manifest`
    after the blobs are sent (tests: what happens meanwhile elsewhere)."""
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
        print(f"backup {bid}: dumping database {site.db_name} ...", file=sys.stderr, flush=True)
        database.dump(site, inv, Path(state["dump"]))
        run_file.write_text(json.dumps(state))
    # Before anything is listed or sent (and after the dump is kept: a bucket that
    # refuses writes leaves a run that resumes from its dump): a prune elsewhere
    # now keeps every blob.
    markers.begin_backup(s3, cfg, state["id"])
    bid = state["id"]
    rd = wd / "runs" / bid
    dump_key = cfg.key("db", f"{bid}.dump")
    if after_dump is not None:
        after_dump()
    up = upload_file(s3, cfg, Path(state["dump"]), dump_key, rd / "dump-upload.json",
                     progress_label="database dump", on_part=on_dump_part, metadata={"backup-id": bid})
    _mark(run_file, state, "dump_uploaded")

    filedir, trashdir = site.dataroot / "filedir", site.dataroot / "trashdir"
    idx = BlobIndex.for_bucket(site.state_dir, cfg)
    try:
        referenced = database.referenced_contenthashes(Path(state["dump"]), site.db_prefix)
        blobs, checks, missing, blob_list = backup_blobs(s3, cfg, idx, referenced, rd, bid, began,
                                                         filedir, trashdir, before_manifest)
    finally:
        idx.close()
    _mark(run_file, state, "blobs_uploaded")

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
        "blobs": blob_list,
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
    return RunReport(id=bid, manifest_key=mkey, missing=missing, resumed=resumed, db_bytes=up.size,
                     db_parts_resumed=up.parts_resumed, tar_bytes=tar_up.size, blobs=blobs,
                     seconds=time.monotonic() - started)


def backup_blobs(s3: Any, cfg: BackupConfig, idx: BlobIndex, referenced: Iterable[str], rd: Path, bid: str,
                 began: datetime, filedir: Path, trashdir: Path, before_manifest: Callable[[], None] | None = None
                 ) -> tuple[BlobReport, dict[str, Any], list[str], dict[str, Any]]:
    """The filedir part of a run, on disk-backed sets (index.py): what the dump
    references, filedir and trashdir as listed after the dump, what the bucket
    holds. Returns the report, the manifest's checks, the contents missing
    everywhere and the manifest's blob-list entry."""
    last_prune = markers.last_prune(s3, cfg)
    stale = ""
    if last_prune is not None and last_prune["started"] != idx.meta("prune_applied") and \
            datetime.fromisoformat(last_prune["started"]).timestamp() > (idx.rebuilt_at() or 0):
        stale = f"a prune ran at {last_prune['started']} on {last_prune.get('host', '?')}"
    check = idx.ensure(s3, cfg, must_rebuild=stale)
    print(f"bucket index: {'rebuilt (' + check.reason + ')' if check.rebuilt else check.reason}, "
          f"{check.blobs} blobs known, {check.seconds:.1f} s", file=sys.stderr, flush=True)
    for name in ("referenced", "lost"):
        idx.new_set(name, sized=False)
    for name in ("local", "trash", "sent"):
        idx.new_set(name)
    idx.fill("referenced", (h for h in referenced if h != EMPTY_SHA1), sized=False)
    idx.fill("local", iter_filedir(filedir))                 # listed after the dump
    idx.fill("trash", iter_filedir(trashdir))

    sent: list[tuple[str, int]] = []

    def on_sent(sha1: str, size: int) -> None:
        sent.append((sha1, size))
        if len(sent) >= 5000:
            flush()

    def flush() -> None:
        idx.fill("sent", sent)
        sent.clear()

    def send(select: str, place: Path, *, fallback: Path | None) -> BlobReport:
        count = idx.scalar(f"SELECT count(*) FROM ({select})")
        nbytes = idx.scalar(f"SELECT sum(size) FROM ({select})")
        rep = send_blobs(s3, cfg, place, idx.pages(select), count=count, nbytes=nbytes, trashdir=fallback,
                         on_sent=on_sent)
        flush()
        idx.fill("lost", rep.vanished + rep.corrupt, sized=False)
        idx.db.execute("INSERT OR REPLACE INTO stored SELECT sha1, size FROM sent")
        idx.db.execute("DELETE FROM sent")
        return rep

    unstored = "LEFT JOIN stored s ON s.sha1 = {t}.sha1 WHERE (s.size IS NULL OR s.size <> {t}.size)"
    blobs = send("SELECT l.sha1, l.size FROM local l " + unstored.format(t="l"), filedir, fallback=trashdir)
    blobs.total = idx.scalar("SELECT count(*) FROM local")
    blobs.total_bytes = idx.scalar("SELECT sum(size) FROM local")
    blobs.skipped = blobs.total - blobs.uploaded - len(blobs.vanished) - len(blobs.corrupt)
    blobs.skipped_bytes = max(0, blobs.total_bytes - blobs.uploaded_bytes)
    # Referenced by the dump but deleted since: Moodle moved it to trashdir.
    from_trash = ("SELECT t.sha1, t.size FROM trash t JOIN referenced r ON r.sha1 = t.sha1 "
                  "LEFT JOIN local l ON l.sha1 = t.sha1 " + unstored.format(t="t") + " AND l.sha1 IS NULL")
    trash_rep = send(from_trash, trashdir, fallback=None)
    blobs.uploaded += trash_rep.uploaded
    blobs.uploaded_bytes += trash_rep.uploaded_bytes
    blobs.corrupt += trash_rep.corrupt
    blobs.vanished += trash_rep.vanished

    if before_manifest is not None:
        before_manifest()
    overlapped = markers.prune_overlapped(s3, cfg, began)
    if overlapped:
        # A prune elsewhere may have deleted a blob this run counted as stored:
        # look again, and send whatever is still on disk.
        idx.rebuild(s3, cfg)
        again = ("SELECT x.sha1, x.size FROM (SELECT sha1, size FROM local UNION SELECT sha1, size FROM trash) x "
                 + unstored.format(t="x"))
        send(again, filedir, fallback=trashdir)
    idx.db.execute("DROP TABLE IF EXISTS temp.needed")
    idx.db.execute("CREATE TEMP TABLE needed AS SELECT s.sha1, s.size FROM stored s "
                   "WHERE s.sha1 IN (SELECT sha1 FROM local UNION SELECT sha1 FROM referenced)")
    missing_sql = "SELECT r.sha1 FROM referenced r LEFT JOIN stored s ON s.sha1 = r.sha1 WHERE s.sha1 IS NULL"
    missing = [row[0] for _, row in zip(range(1000), idx.pages(missing_sql), strict=False)]
    checks = {
        "listing": "filedir and trashdir listed after the database dump",
        "index": check.reason + (" (rebuilt)" if check.rebuilt else ""),
        "referenced_by_dump": idx.scalar("SELECT count(*) FROM referenced"),
        "in_filedir": idx.scalar("SELECT count(*) FROM referenced r JOIN local l ON l.sha1 = r.sha1"),
        "from_trashdir": idx.scalar("SELECT count(*) FROM referenced r JOIN trash t ON t.sha1 = r.sha1 "
                                    "LEFT JOIN local l ON l.sha1 = r.sha1 WHERE l.sha1 IS NULL "
                                    "AND r.sha1 NOT IN (SELECT sha1 FROM lost)"),
        "only_in_bucket": idx.scalar("SELECT count(*) FROM referenced r JOIN stored s ON s.sha1 = r.sha1 "
                                     "WHERE r.sha1 NOT IN (SELECT sha1 FROM local UNION SELECT sha1 FROM trash)"),
        "vanished_during_run": sorted(blobs.vanished)[:1000],
        "missing": missing,
        "missing_count": idx.scalar(f"SELECT count(*) FROM ({missing_sql})"),
        "prune_overlapped": overlapped,
    }
    # The list of blobs is an object of its own (gzip, one sha1 a line, sorted):
    # a million of them would not fit a manifest read in one piece.
    list_path = rd / "blobs.txt.gz"
    with gzip.open(list_path, "wt", compresslevel=6) as out:
        for (sha1,) in idx.pages("SELECT sha1 FROM needed"):
            out.write(sha1 + "\n")
    list_key = manifest.blob_list_key(cfg, bid)
    list_up = upload_file(s3, cfg, list_path, list_key, rd / "list-upload.json", progress_label="blob list")
    entry = {"count": idx.scalar("SELECT count(*) FROM needed"), "bytes": idx.scalar("SELECT sum(size) FROM needed"),
             "list": {"key": list_key, "sha256": list_up.sha256, "size": list_up.size}}
    return blobs, checks, missing, entry


def _mark(run_file: Path, state: dict[str, Any], step: str) -> None:
    # What an interrupted run had finished, for its one-line report (`backup run` resumes anyway).
    state[step] = True
    run_file.write_text(json.dumps(state))


def report_json(rep: RunReport) -> dict[str, Any]:
    d = asdict(rep)
    d["blobs"]["vanished"] = len(rep.blobs.vanished)
    return d
