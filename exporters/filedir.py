"""Walk Moodle's filedir in hash order and compare it with the database's hashes.

filedir holds one blob per contenthash at <h[0:2]>/<h[2:4]>/<h>
(file_system_filedir::get_contentdir_from_hash). Sorting the two directory
levels and the names gives the blobs in hash order, so the walk can be merged
with the database's sorted hashes in one pass and constant memory: blobs with
no row are orphans, rows with no blob are missing content.

Only names matching ^[0-9a-f]{40}$ are blobs: warning.txt, jackpot/ and the
<hash>.tmp files of interrupted writes are skipped.

Every filesystem call goes through WalkProgress.call, which records which call
is running since when: a watchdog (storage_disk) reports a hung network
filesystem as a stuck walk instead of waiting for ever, and the walk's progress
is readable at any time.

Incremental walk (WalkCache): what the last walk saw in each ab/cd directory,
with that directory's mtime. A directory whose mtime did not change since is not
listed again (adding or removing a blob changes it; blobs are never rewritten in
place); a full walk, on a schedule, lists everything."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from moodleops.exporters.storage_model import FiledirStats

_HASH = re.compile(r"^[0-9a-f]{40}$")
_LEVEL = re.compile(r"^[0-9a-f]{2}$")
#: sha1('') : the directory rows' content. Moodle never removes it (file_system::is_file_removable).
EMPTY_HASH = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


class Blob(NamedTuple):
    # A tuple, not a dataclass: an incremental walk makes one per blob of the pool
    # from the state file, and that creation is most of its CPU.
    hash: str
    size: int
    mtime: float


class WalkProgress:
    """Where the disk part is: read by a watchdog thread while the walk runs (plain
    attributes: one writer, readers tolerate a value one step old)."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.call_started = 0.0        # time.monotonic() when the running call began; 0: none
        self.call_path = ""
        self.ratio = 0.0               # share of the ab/cd directory space already walked
        self.dirs_listed = 0
        self.dirs_reused = 0
        self.blobs = 0

    @contextmanager
    def call(self, path: object) -> Iterator[None]:
        self.call_path = str(path)
        self.call_started = time.monotonic()
        try:
            yield
        finally:
            self.call_started = 0.0

    def running_for(self, now: float | None = None) -> float:
        started = self.call_started
        return 0.0 if not started else (time.monotonic() if now is None else now) - started


def _sorted_entries(path: Path, errors: list[str], progress: WalkProgress) -> list[os.DirEntry[str]]:
    try:
        with progress.call(path), os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        errors.append(f"{path}: {exc.strerror or exc}")
        return []


_CACHED = np.dtype([("h", "S20"), ("s", "<i8"), ("m", "<f8")])
_DIRS = np.dtype([("mtime_ns", "<i8"), ("listed_ns", "<i8"), ("offset", "<i8"), ("count", "<i8")])
# A directory modified this close to its listing may have changed in the same mtime tick.
_MTIME_SLACK_NS = 2_000_000_000


class WalkCache:
    """The last walk, per ab/cd directory (index int(abcd, 16)): its mtime, when it was
    listed, and its blobs (hash, size, mtime) in a flat file in hash order. Written next to
    `path` and renamed into place at the end, so a killed walk leaves the previous one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dirs_file = Path(f"{path}.dirs.npz")
        self._blobs_file = Path(f"{path}.blobs")
        # Per-directory state as plain lists: the walk reads and writes one entry per
        # directory (65,536), and numpy's element access would cost more than the rest.
        self._mtime_ns, self._listed_ns = [0] * 65536, [0] * 65536
        self._offset, self._count = [-1] * 65536, [0] * 65536
        self._old: tuple[list[int], list[int], list[int], list[int]] | None = None
        self._old_blobs = None
        self._last_raw = b""
        try:
            with np.load(self._dirs_file) as saved:
                old, token = saved["dirs"], saved["token"].tobytes()
            # Read forward only, through a large buffer: one small read per directory.
            blobs = open(self._blobs_file, "rb", buffering=4 << 20)   # noqa: SIM115 - closed in finish
            # The index and the blobs must be of the same walk (a crash between the two
            # renames would pair them wrongly): both carry the walk's random token.
            if old.dtype == _DIRS and len(old) == 65536 and blobs.read(16) == token:
                self._old_blobs = blobs
                self._old = (old["mtime_ns"].tolist(), old["listed_ns"].tolist(),
                             old["offset"].tolist(), old["count"].tolist())
            else:
                blobs.close()
        except (OSError, ValueError, KeyError):
            self._old = None
        self._token = os.urandom(16)
        self._new_blobs = open(f"{self._blobs_file}.new", "wb", buffering=4 << 20)   # noqa: SIM115 - closed in finish
        self._new_blobs.write(self._token)
        self._written = 0

    @property
    def has_previous(self) -> bool:
        return self._old is not None

    def reuse(self, index: int, mtime_ns: int) -> list[Blob] | None:
        """The blobs the last walk saw in directory `index`, if it cannot have changed."""
        if self._old is None or self._old_blobs is None:
            return None
        old_mtime, old_listed, old_offset, old_count = self._old
        offset, count = old_offset[index], old_count[index]
        if offset < 0 or old_mtime[index] != mtime_ns or mtime_ns >= old_listed[index] - _MTIME_SLACK_NS:
            return None
        want = 16 + offset * _CACHED.itemsize
        if self._old_blobs.tell() != want:
            self._old_blobs.seek(want)
        raw = self._old_blobs.read(count * _CACHED.itemsize)
        if len(raw) != count * _CACHED.itemsize:
            return None
        self._last_raw = raw
        rec = np.frombuffer(raw, dtype=_CACHED)
        hexes = rec["h"].tobytes().hex()
        return list(map(Blob, [hexes[i:i + 40] for i in range(0, 40 * count, 40)],
                        rec["s"].tolist(), rec["m"].tolist()))

    def listed_ns(self, index: int) -> int:
        return self._old[1][index] if self._old is not None else 0

    def record(self, index: int, mtime_ns: int, listed_ns: int, blobs: list[Blob]) -> None:
        rec = np.empty(len(blobs), dtype=_CACHED)
        if blobs:
            rec["h"] = np.frombuffer(bytes.fromhex("".join(b.hash for b in blobs)), dtype="S20")
            rec["s"] = [b.size for b in blobs]
            rec["m"] = [b.mtime for b in blobs]
        self._put(index, mtime_ns, listed_ns, rec.tobytes(), len(blobs))

    def record_reused(self, index: int, mtime_ns: int) -> None:
        """Carry the directory `reuse` just returned over to the new state, as read."""
        raw = self._last_raw
        self._put(index, mtime_ns, self.listed_ns(index), raw, len(raw) // _CACHED.itemsize)

    def _put(self, index: int, mtime_ns: int, listed_ns: int, raw: bytes, count: int) -> None:
        self._new_blobs.write(raw)
        self._mtime_ns[index], self._listed_ns[index] = mtime_ns, listed_ns
        self._offset[index], self._count[index] = self._written, count
        self._written += count

    @property
    def dirs(self) -> np.ndarray:
        out = np.zeros(65536, dtype=_DIRS)
        out["mtime_ns"], out["listed_ns"] = self._mtime_ns, self._listed_ns
        out["offset"], out["count"] = self._offset, self._count
        return out

    def finish(self, complete: bool) -> None:
        """Keep the new state (complete walk) or the previous one (interrupted)."""
        self._new_blobs.close()
        if self._old_blobs is not None:
            self._old_blobs.close()
        new = Path(f"{self._blobs_file}.new")
        if not complete:
            new.unlink(missing_ok=True)
            return
        tmp_dirs = Path(f"{self._dirs_file}.new")
        with open(tmp_dirs, "wb") as out:
            np.savez(out, dirs=self.dirs, token=np.frombuffer(self._token, dtype=np.uint8))
        os.replace(new, self._blobs_file)
        os.replace(tmp_dirs, self._dirs_file)


def _list_blobs(l2: Path, prefix: str, errors: list[str], progress: WalkProgress) -> list[Blob]:
    out: list[Blob] = []
    for entry in _sorted_entries(l2, errors, progress):
        name = entry.name
        if not _HASH.match(name):
            continue
        if not name.startswith(prefix):
            errors.append(f"{entry.path}: blob in the wrong directory")
            continue
        try:
            with progress.call(entry.path):
                st = entry.stat()
        except OSError as exc:
            errors.append(f"{entry.path}: {exc.strerror or exc}")
            continue
        out.append(Blob(name, st.st_size, st.st_mtime))
    return out


def walk_filedir(filedir: Path, errors: list[str], progress: WalkProgress | None = None,
                 cache: WalkCache | None = None, full: bool = True) -> Iterator[Blob]:
    """Yield the blobs of `filedir` in ascending hash order. Entries that cannot
    be read are appended to `errors` (path: reason) and skipped: one bad
    directory must not hide the rest of the pool. With `cache` and not `full`,
    directories unchanged since the last walk are not listed again."""
    progress = progress or WalkProgress()
    with progress.call(filedir):
        is_dir = filedir.is_dir()
    if not is_dir:
        errors.append(f"{filedir}: not a directory")
        return
    reuse = cache is not None and not full
    for l1 in _sorted_entries(filedir, errors, progress):
        if not _LEVEL.match(l1.name):
            continue
        with progress.call(l1.path):
            l1_is_dir = l1.is_dir(follow_symlinks=False)
        if not l1_is_dir:
            errors.append(f"{l1.path}: not a directory")
            continue
        for l2 in _sorted_entries(Path(l1.path), errors, progress):
            if not _LEVEL.match(l2.name):
                continue
            prefix = l1.name + l2.name
            index = int(prefix, 16)
            progress.ratio = index / 65536
            try:
                with progress.call(l2.path):
                    st = l2.stat(follow_symlinks=False)
            except OSError as exc:
                errors.append(f"{l2.path}: {exc.strerror or exc}")
                continue
            if not stat.S_ISDIR(st.st_mode):
                errors.append(f"{l2.path}: not a directory")
                continue
            blobs = cache.reuse(index, st.st_mtime_ns) if reuse and cache is not None else None
            if blobs is None:
                listed_ns = time.time_ns()
                n_errors = len(errors)
                blobs = _list_blobs(Path(l2.path), prefix, errors, progress)
                progress.dirs_listed += 1
                if cache is not None and len(errors) == n_errors:
                    cache.record(index, st.st_mtime_ns, listed_ns, blobs)
            else:
                progress.dirs_reused += 1
                if cache is not None:
                    cache.record_reused(index, st.st_mtime_ns)
            for b in blobs:
                progress.blobs += 1
                yield b
    progress.ratio = 1.0


def in_trash(trashdir: Path, contenthash: str) -> bool:
    """Whether Moodle's recover_file() could restore this content (both trash layouts)."""
    h = contenthash
    return (trashdir / h[0:2] / h[2:4] / h).is_file() or (trashdir / h).is_file()


class FiledirMerge:
    """Consumes the database's distinct hashes in ascending order (`see`) while
    advancing the filedir walk; `finish` drains the walk. Blobs newer than
    `cutoff` (unix time) are never orphans: their row may not be committed yet."""

    def __init__(self, filedir: Path, trashdir: Path, cutoff: float, progress: WalkProgress | None = None,
                 cache: WalkCache | None = None, full: bool = True) -> None:
        self.stats = FiledirStats()
        self._trashdir = trashdir
        self._cutoff = cutoff
        self._progress = progress or WalkProgress()
        self._walk = walk_filedir(filedir, self.stats.errors, self._progress, cache, full)
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
        elif self._in_trash(contenthash):
            self.stats.missing_in_trash += 1
        else:
            self.stats.missing_blobs += 1
            self.stats.missing_bytes += size

    def _in_trash(self, contenthash: str) -> bool:
        with self._progress.call(self._trashdir):
            return in_trash(self._trashdir, contenthash)

    def finish(self) -> FiledirStats:
        while self._head is not None:
            self._unreferenced(self._head)
            self._advance()
        self.stats.dirs_listed = self._progress.dirs_listed
        self.stats.dirs_reused = self._progress.dirs_reused
        return self.stats


def dir_size(path: Path, progress: WalkProgress | None = None) -> int:
    """Apparent size (bytes) of every regular file under `path`; 0 if absent.
    Unreadable parts are skipped: these are informative sizes, not the pool."""
    progress = progress or WalkProgress()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with progress.call(current), os.scandir(current) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                with progress.call(entry.path):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def filesystem_usage(path: Path, progress: WalkProgress | None = None) -> tuple[int, int, int] | None:
    """(capacity, used, available) bytes of the filesystem holding `path`."""
    try:
        with (progress or WalkProgress()).call(path):
            st = os.statvfs(path)
    except OSError:
        return None
    capacity = st.f_blocks * st.f_frsize
    free = st.f_bfree * st.f_frsize
    return capacity, capacity - free, st.f_bavail * st.f_frsize
