"""Walk Moodle's filedir in hash order and compare it with the database's hashes.

filedir holds one blob per contenthash at <h[0:2]>/<h[2:4]>/<h>
(file_system_filedir::get_contentdir_from_hash). Sorting the two directory
levels and the names gives the blobs in hash order, so the walk can be merged
with the database's sorted hashes in one pass and constant memory: blobs with
no row are orphans, rows with no blob are missing content.

Only names matching ^[0-9a-f]{40}$ are blobs: warning.txt, jackpot/ and the
<hash>.tmp files of interrupted writes are skipped."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moodleops.exporters.storage_model import FiledirStats

_HASH = re.compile(r"^[0-9a-f]{40}$")
_LEVEL = re.compile(r"^[0-9a-f]{2}$")
#: sha1('') : the directory rows' content. Moodle never removes it (file_system::is_file_removable).
EMPTY_HASH = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


@dataclass(frozen=True)
class Blob:
    hash: str
    size: int
    mtime: float


def _sorted_entries(path: Path, errors: list[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        errors.append(f"{path}: {exc.strerror or exc}")
        return []


def walk_filedir(filedir: Path, errors: list[str]) -> Iterator[Blob]:
    """Yield the blobs of `filedir` in ascending hash order. Entries that cannot
    be read are appended to `errors` (path: reason) and skipped: one bad
    directory must not hide the rest of the pool."""
    if not filedir.is_dir():
        errors.append(f"{filedir}: not a directory")
        return
    for l1 in _sorted_entries(filedir, errors):
        if not _LEVEL.match(l1.name):
            continue
        if not l1.is_dir(follow_symlinks=False):
            errors.append(f"{l1.path}: not a directory")
            continue
        for l2 in _sorted_entries(Path(l1.path), errors):
            if not _LEVEL.match(l2.name):
                continue
            if not l2.is_dir(follow_symlinks=False):
                errors.append(f"{l2.path}: not a directory")
                continue
            prefix = l1.name + l2.name
            for entry in _sorted_entries(Path(l2.path), errors):
                name = entry.name
                if not _HASH.match(name):
                    continue
                if not name.startswith(prefix):
                    errors.append(f"{entry.path}: blob in the wrong directory")
                    continue
                try:
                    st = entry.stat()
                except OSError as exc:
                    errors.append(f"{entry.path}: {exc.strerror or exc}")
                    continue
                yield Blob(name, st.st_size, st.st_mtime)


def in_trash(trashdir: Path, contenthash: str) -> bool:
    """Whether Moodle's recover_file() could restore this content (both trash layouts)."""
    h = contenthash
    return (trashdir / h[0:2] / h[2:4] / h).is_file() or (trashdir / h).is_file()


class FiledirMerge:
    """Consumes the database's distinct hashes in ascending order (`see`) while
    advancing the filedir walk; `finish` drains the walk. Blobs newer than
    `cutoff` (unix time) are never orphans: their row may not be committed yet."""

    def __init__(self, filedir: Path, trashdir: Path, cutoff: float) -> None:
        self.stats = FiledirStats()
        self._trashdir = trashdir
        self._cutoff = cutoff
        self._walk = walk_filedir(filedir, self.stats.errors)
        self._head: Blob | None = next(self._walk, None)
        self._count(self._head)

    def _count(self, blob: Blob | None) -> None:
        if blob is not None:
            self.stats.blobs += 1
            self.stats.bytes += blob.size

    def _advance(self) -> None:
        self._head = next(self._walk, None)
        self._count(self._head)

    def _unreferenced(self, blob: Blob) -> None:
        if blob.hash == EMPTY_HASH:
            return
        if blob.mtime > self._cutoff:
            self.stats.recent_unreferenced += 1
        else:
            self.stats.orphan_blobs += 1
            self.stats.orphan_bytes += blob.size

    def see(self, contenthash: str, size: int) -> None:
        while self._head is not None and self._head.hash < contenthash:
            self._unreferenced(self._head)
            self._advance()
        if self._head is not None and self._head.hash == contenthash:
            self._advance()
        elif in_trash(self._trashdir, contenthash):
            self.stats.missing_in_trash += 1
        else:
            self.stats.missing_blobs += 1
            self.stats.missing_bytes += size

    def finish(self) -> FiledirStats:
        while self._head is not None:
            self._unreferenced(self._head)
            self._advance()
        return self.stats


def dir_size(path: Path) -> int:
    """Apparent size (bytes) of every regular file under `path`; 0 if absent.
    Unreadable parts are skipped: these are informative sizes, not the pool."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def filesystem_usage(path: Path) -> tuple[int, int, int] | None:
    """(capacity, used, available) bytes of the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    capacity = st.f_blocks * st.f_frsize
    free = st.f_bfree * st.f_frsize
    return capacity, capacity - free, st.f_bavail * st.f_frsize
