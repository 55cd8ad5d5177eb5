"""The disk part of a scan, after the database transaction closed: the filesystem
holding filedir, the directories outside it, Moodle's automated backup directory
and the filedir walk merged with the snapshot's distinct contents.

Every filesystem call goes through WalkProgress.call: `watch` runs the disk part
in a thread and gives up on it when one call has been running for longer than
the configured timeout (a hung NFS mount blocks a call for ever, uninterruptibly:
the only safe answer is to report the walk as stuck and leave that thread behind
in a process that is then ended)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moodleops.exporters.filedir import FiledirMerge, WalkCache, WalkProgress, dir_size, filesystem_usage
from moodleops.exporters.storage_model import BackupFile, FiledirStats, ScanConfig
from moodleops.exporters.storage_scan import DbSnapshot

# Moodle's backup file names: <word>-moodle2-course-<course id>-...mbz (see storage_scan).
_BACKUP_NAME = re.compile(r"^[^-]+-moodle2-course-([0-9]{1,12})-.*\.mbz$")


@dataclass
class DiskFigures:
    fs: tuple[int, int, int] | None = None
    dir_bytes: dict[str, int] = field(default_factory=dict)
    auto_backups: list[BackupFile] = field(default_factory=list)
    filedir: FiledirStats | None = None
    warnings: list[str] = field(default_factory=list)
    finished_at: float = 0.0


class WalkStuck(RuntimeError):
    """A filesystem call did not return within the timeout."""

    def __init__(self, path: str, seconds: float) -> None:
        super().__init__(f"filesystem call on {path} has not returned for {seconds:.0f} s "
                         "(hung network filesystem?): walk abandoned")
        self.path = path
        self.seconds = seconds


def disk_figures(cfg: ScanConfig, snap: DbSnapshot, progress: WalkProgress) -> DiskFigures:
    """Everything read from disk for this scan (the walk only when cfg.walk_filedir)."""
    out = DiskFigures()
    progress.phase = "filesystem"
    # The filesystem that holds filedir: a relocated filedir is often its own mount.
    out.fs = filesystem_usage(cfg.paths.filedir, progress)
    if out.fs is None:
        out.warnings.append(f"{cfg.paths.filedir}: cannot read filesystem usage")
    progress.phase = "side_dirs"
    out.dir_bytes = {name: dir_size(path, progress) for name, path in cfg.paths.side_dirs().items()}
    if snap.auto_backup_dir is not None:
        progress.phase = "automated_backups"
        out.auto_backups = _automated_backups(snap, progress, out.warnings)
    if cfg.walk_filedir and snap.contents is not None:
        progress.phase = "filedir"
        cache = WalkCache(cfg.walk_state) if cfg.walk_state is not None else None
        full = cfg.full_walk or cache is None or not cache.has_previous
        merge = FiledirMerge(cfg.paths.filedir, cfg.paths.trashdir, snap.result.started_at - cfg.orphan_margin_s,
                             progress, cache, full)
        for h, size in snap.contents:
            merge.see(h, size)
        out.filedir = merge.finish()
        out.filedir.incremental = not full
        if cache is not None:
            cache.finish(complete=True)
    progress.phase = "done"
    out.finished_at = time.time()
    return out


def _automated_backups(snap: DbSnapshot, progress: WalkProgress, warnings: list[str]) -> list[BackupFile]:
    """The .mbz files of Moodle's automated backup directory, each tied to its course's school."""
    import os

    d = snap.auto_backup_dir
    assert d is not None
    found: list[BackupFile] = []
    try:
        with progress.call(d), os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        warnings.append(f"automated backup directory {d} (backup_auto_destination): {exc.strerror or exc}")
        return found
    for e in entries:
        m = _BACKUP_NAME.match(e.name)
        if not m:
            continue
        try:
            with progress.call(e.path):
                if not e.is_file(follow_symlinks=False):
                    continue
                size = e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        course = int(m.group(1))
        found.append(BackupFile(snap.course_school.get(course, ""), course, "automated_dir", e.name, size))
    return found


def apply(snap: DbSnapshot, disk: DiskFigures) -> None:
    """Fold the disk figures into the snapshot's result."""
    r = snap.result
    pool = r.pool
    if disk.fs is not None:
        pool.fs_capacity_bytes, pool.fs_used_bytes, pool.fs_available_bytes = disk.fs
    pool.dir_bytes = disk.dir_bytes
    pool.filedir = disk.filedir
    r.backups = [b for b in r.backups if b.where != "automated_dir"] + disk.auto_backups
    r.warnings += disk.warnings
    r.disk_at = disk.finished_at


def read_disk(cfg: ScanConfig, snap: DbSnapshot, progress: WalkProgress) -> DiskFigures:
    """disk_figures in this thread (no watchdog), folded into snap.result."""
    disk = disk_figures(cfg, snap, progress)
    pool_path = str(cfg.paths.filedir)
    snap.result.pool.fs_path = pool_path
    apply(snap, disk)
    return disk


def watch(cfg: ScanConfig, snap: DbSnapshot, progress: WalkProgress,
          report: Callable[[WalkProgress], None] | None = None, every_s: float = 1.0) -> DiskFigures:
    """disk_figures in a daemon thread; `report(progress)` every `every_s` seconds.
    Raises WalkStuck when one filesystem call runs longer than cfg.fs_call_timeout_s:
    the thread is left behind (it cannot be interrupted), so call this in a process
    that ends afterwards."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["ok"] = disk_figures(cfg, snap, progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the watching thread
            box["error"] = exc

    t = threading.Thread(target=body, name="storage-disk", daemon=True)
    t.start()
    while True:
        t.join(every_s)
        if not t.is_alive():
            break
        if report is not None:
            report(progress)
        running = progress.running_for()
        if running > cfg.fs_call_timeout_s:
            raise WalkStuck(progress.call_path, running)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    disk = box["ok"]
    assert isinstance(disk, DiskFigures)
    snap.result.pool.fs_path = str(cfg.paths.filedir)
    apply(snap, disk)
    return disk
