"""Restore a whole platform from one manifest onto a target site (any
inventory: the production web node after a disaster, a rehearsal instance).

Everything that can be checked is checked before the target changes: the
manifest, the target's code version, the dump's and the archive's sha256, and
every blob's sha1 (blobs go into filedir first, where extra content-addressed
files are harmless). Only then: maintenance on, database replaced, the other
moodledata folders replaced, caches purged, maintenance off."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from moodleops.backup import database, manifest, sealing
from moodleops.backup.blobs import FetchReport, fetch_blobs
from moodleops.backup.config import BackupConfig
from moodleops.backup.progress import Progress, human_bytes, human_seconds
from moodleops.backup.s3 import BackupError
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.site import Site


@dataclass
class RestorePlan:
    manifest_key: str
    manifest: dict[str, Any]
    target: Site
    steps: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)        # unsealed: never printed
    plugin_differences: list[str] = field(default_factory=list)


def _plugin_differences(m: dict[str, Any], inv: Inventory) -> list[str]:
    """Add-ons the target pins whose version in the backup is another (the
    backup's unpinned components are subplugins shipped inside a pinned parent)."""
    backed = {c: v for c, v in m["moodle"].get("plugins", {}).items() if v is not None}
    pinned = {p.component: p.version for p in inv.plugins}
    out = []
    for comp in sorted(pinned):
        b, t = backed.get(comp), pinned.get(comp)
        if b is None or t is None or Decimal(str(b)) != t:
            out.append(f"{comp}: backup {b or 'absent'}, target pins {t if t is not None else 'absent'}")
    return out


def plan(s3: Any, cfg: BackupConfig, key: str, inv: Inventory, site: Site, *,
         allow_plugin_differences: bool = False) -> RestorePlan:
    m = manifest.get(s3, cfg, key)
    have = Decimal(str(m["moodle"]["version"]))
    if have != inv.core.version:
        # Moodle refuses a database newer than its code, and an older one means an
        # upgrade: both belong to `platform upgrade`, not to a restore.
        raise BackupError(f"manifest {key} is Moodle {m['moodle']['version']} ({m['moodle']['release']}) but the "
                          f"target inventory '{inv.env}' pins core {inv.core.version_text}: deploy the same "
                          f"version first, or restore another manifest")
    diffs = _plugin_differences(m, inv)
    if diffs and not allow_plugin_differences:
        # Old plugin code on a newer plugin schema breaks pages; a newer one needs an upgrade.
        raise BackupError(f"manifest {key} was taken with other plugin versions than the target pins: "
                          f"{'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}. Deploy the same pins, or "
                          f"pass --allow-plugin-differences (then run `platform upgrade`). Nothing was changed")
    # Unsealed before anything changes: a wrong or missing key stops here.
    if "secrets" in m:
        secrets = sealing.unseal(sealing.load_key(site), m["secrets"], key)
    else:
        secrets = {"config_php": str(m.get("config_php", ""))}        # format 1
    b = m["blobs"]
    p = RestorePlan(manifest_key=key, manifest=m, target=site, secrets=secrets, plugin_differences=diffs)
    p.steps = [
        f"download and verify the database dump {m['database']['key']} ({human_bytes(m['database']['size'])})",
        f"download and verify the moodledata archive {m['moodledata']['key']} ({', '.join(m['moodledata']['included'])})",
        (f"put back {b['count']} filedir blobs ({human_bytes(b['bytes'])}) into {site.dataroot / 'filedir'}, "
        f"each checked against its sha1"),
        f"CLI maintenance ON at {site.wwwroot}",
        f"replace database {site.db_name} by the dump (Moodle {m['moodle']['release']})",
        f"replace moodledata folders {', '.join(m['moodledata']['included'])} in {site.dataroot}",
        "purge Moodle caches, CLI maintenance OFF",
    ]
    return p


def _download_verified(s3: Any, cfg: BackupConfig, key: str, sha256: str, size: int, out: Path) -> None:
    progress = Progress(key.rsplit("/", 1)[-1], size)
    body = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"]
    h = hashlib.sha256()
    with open(out, "wb") as fh:
        while chunk := body.read(1024 * 1024):
            h.update(chunk)
            fh.write(chunk)
            progress.add(len(chunk))
    if h.hexdigest() != sha256:
        out.unlink()
        raise BackupError(f"s3://{cfg.bucket}/{key} is corrupted: sha256 {h.hexdigest()}, the manifest says {sha256} "
                          f"(nothing on the target was changed)")


def _owner_and_modes(dataroot: Path, web_user: str) -> tuple[int, int, int, int]:
    import pwd
    if dataroot.is_dir():
        st = dataroot.stat()
        dir_mode = st.st_mode & 0o7777
        return st.st_uid, st.st_gid, dir_mode, dir_mode & 0o666
    pw = pwd.getpwnam(web_user)
    return pw.pw_uid, pw.pw_gid, 0o2770, 0o660


def _chown_tree(path: Path, uid: int, gid: int, dir_mode: int, file_mode: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        os.chmod(root, dir_mode)
        for f in files:
            fp = os.path.join(root, f)
            os.chown(fp, uid, gid, follow_symlinks=False)
            os.chmod(fp, file_mode)


def _check_archive(tar_path: Path) -> None:
    """Refuse, before the target changes, an archive member tarfile's data
    filter would refuse (absolute, `..`, a device, a link out of moodledata).
    Debian 12's Python (3.11.2, the web nodes') predates the filter (3.11.4),
    so the refusals are made here for every Python (the upgrade's release
    module makes the same ones on the hosts)."""
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar.getmembers():
            link = member.linkname.split("/") if member.issym() or member.islnk() else []
            if member.name.startswith("/") or ".." in member.name.split("/") or member.isdev() or \
                    (link and (member.linkname.startswith("/") or ".." in link)):
                raise BackupError(f"{tar_path}: unsafe member {member.name!r}"
                                  f"{' -> ' + repr(member.linkname) if link else ''} (nothing on the target "
                                  "was changed)")


def _extract(tar_path: Path, dest: Path) -> None:
    with tarfile.open(tar_path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:   # members checked by _check_archive
            tar.extractall(dest)


@dataclass
class RestoreReport:
    manifest_key: str
    blobs: FetchReport
    seconds: float
    config_php_copy: str = ""

    def lines(self) -> list[str]:
        b = self.blobs
        return [f"restored {self.manifest_key}",
                f"  filedir: {b.fetched} blobs fetched ({human_bytes(b.fetched_bytes)}), {b.present} already present",
                f"  config.php of the backup (decrypted, mode 0600): {self.config_php_copy}",
                f"  duration: {human_seconds(self.seconds)}"]


# What a restore had done when it stopped, step by step, and what a re-run does then.
_UNTOUCHED = "nothing on the target was changed: a re-run downloads again"
_RERUN = "re-run the same `backup restore --confirm` to finish (maintenance stays ON until it has)"
_DONE = {
    "start": f"nothing downloaded; {_UNTOUCHED}",
    "dump": f"database dump downloaded and verified, moodledata archive not; {_UNTOUCHED}",
    "archive": f"database dump and moodledata archive downloaded and verified; {_UNTOUCHED}",
    "blobs": ("dump and archive verified, filedir blobs being put back (content-addressed: a re-run skips "
              "those present); the target's database and moodledata folders untouched: a re-run goes on"),
    "maintenance": f"filedir blobs put back, CLI maintenance ON, database not replaced yet: {_RERUN}",
    "database": f"database replaced from the dump, moodledata folders not yet: {_RERUN}",
    "folders": ("database and moodledata folders replaced, caches not purged and maintenance still ON: "
                f"{_RERUN}"),
    "caches": ("database and moodledata replaced, caches purged, maintenance still ON: "
               "`moodleops platform maintenance off` (or re-run the restore)"),
}


def apply(s3: Any, cfg: BackupConfig, p: RestorePlan, inv: Inventory) -> RestoreReport:
    """Restore `p` onto its target; a fault on the way carries a note saying
    which steps were done and what a re-run does (the one line shows it)."""
    reached = ["start"]
    try:
        return _apply(s3, cfg, p, inv, reached.append)
    except Exception as exc:
        exc.add_note(f"restore of {p.manifest['id']}: {_DONE[reached[-1]]}")
        raise


def _apply(s3: Any, cfg: BackupConfig, p: RestorePlan, inv: Inventory, step: Any) -> RestoreReport:
    started = time.monotonic()
    site, m = p.target, p.manifest
    work = site.state_dir / "backup" / "restore" / m["id"]
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    dump = work / "db.dump"
    tar_path = work / "moodledata.tar.gz"
    _download_verified(s3, cfg, m["database"]["key"], m["database"]["sha256"], m["database"]["size"], dump)
    step("dump")
    _download_verified(s3, cfg, m["moodledata"]["key"], m["moodledata"]["sha256"], m["moodledata"]["size"], tar_path)
    _check_archive(tar_path)
    step("archive")

    uid, gid, dir_mode, file_mode = _owner_and_modes(site.dataroot, site.web_user)
    if not site.dataroot.is_dir():
        site.dataroot.mkdir(parents=True)
        os.chown(site.dataroot, uid, gid)
        os.chmod(site.dataroot, dir_mode)
    filedir = site.dataroot / "filedir"
    if not filedir.is_dir():
        filedir.mkdir()
        os.chown(filedir, uid, gid)
        os.chmod(filedir, dir_mode)
    step("blobs")
    blobs = fetch_blobs(s3, cfg, filedir, manifest.iter_blobs(s3, cfg, m), uid=uid, gid=gid, file_mode=file_mode,
                        dir_mode=dir_mode)

    moodle = MoodleCLI(site)
    try:
        moodle.run("admin/cli/maintenance.php", "--enable")
    except MoodleError:
        # No usable database on the target (the very case a restore is for): Moodle
        # cannot run its CLI, but its CLI maintenance switch is only this file.
        flag = site.dataroot / "climaintenance.html"
        flag.write_text("<h1>Restoring from backup</h1>")
        os.chown(flag, uid, gid)
    step("maintenance")
    database.restore(site, inv, dump)
    step("database")
    for name in m["moodledata"]["included"]:
        target = site.dataroot / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    _extract(tar_path, site.dataroot)
    for name in m["moodledata"]["included"]:
        target = site.dataroot / name
        if target.is_dir():
            _chown_tree(target, uid, gid, dir_mode, file_mode)
        elif target.exists():
            os.chown(target, uid, gid)
            os.chmod(target, file_mode)
    step("folders")
    moodle.run("admin/cli/purge_caches.php")
    step("caches")
    moodle.run("admin/cli/maintenance.php", "--disable")
    shutil.rmtree(work, ignore_errors=True)
    # The backed-up config.php (decrypted), root-only, to compare with the target's own.
    saved = site.state_dir / "backup" / f"config.php.{m['id']}"
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(p.secrets.get("config_php", ""))
    return RestoreReport(manifest_key=p.manifest_key, blobs=blobs, seconds=time.monotonic() - started,
                         config_php_copy=str(saved))
