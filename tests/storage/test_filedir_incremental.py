"""The incremental walk: only ab/cd directories whose mtime changed are listed
again, and what it yields is exactly what a full walk of the same tree yields."""

from __future__ import annotations

import os
import time
from pathlib import Path

from moodleops.exporters.filedir import WalkCache, WalkProgress, walk_filedir
from test_filedir import plant


def age_dirs(root: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    for l1 in root.iterdir():
        for l2 in l1.iterdir():
            os.utime(l2, (t, t))


def walk(root: Path, state: Path, full: bool) -> tuple[list[tuple[str, int]], WalkProgress]:
    progress = WalkProgress()
    cache = WalkCache(state)
    errors: list[str] = []
    got = [(b.hash, b.size) for b in walk_filedir(root, errors, progress, cache, full)]
    cache.finish(complete=True)
    assert errors == []
    return got, progress


def test_incremental_walk_lists_only_changed_directories(tmp_path: Path) -> None:
    root, state = tmp_path / "filedir", tmp_path / "walk"
    root.mkdir()
    for i in range(300):
        plant(root, f"blob {i}")
    age_dirs(root)
    first, p1 = walk(root, state, full=True)
    assert p1.dirs_listed == len({h[:4] for h, _ in first}) and p1.dirs_reused == 0 and p1.ratio == 1.0
    again, p2 = walk(root, state, full=False)
    assert again == first and p2.dirs_listed == 0 and p2.dirs_reused == p1.dirs_listed
    # One blob added, one removed: their two directories change, nothing else.
    added = plant(root, "a new one")
    gone = first[7][0]
    (root / gone[:2] / gone[2:4] / gone).unlink()
    third, p3 = walk(root, state, full=False)
    full, _ = walk(root, tmp_path / "other", full=True)
    assert third == full and added in {h for h, _ in third} and gone not in {h for h, _ in third}
    assert p3.dirs_listed == len({added[:4], gone[:4]})


def test_a_broken_state_means_a_full_walk(tmp_path: Path) -> None:
    root, state = tmp_path / "filedir", tmp_path / "walk"
    root.mkdir()
    for i in range(50):
        plant(root, f"blob {i}")
    age_dirs(root)
    first, _ = walk(root, state, full=True)
    # A blobs file from another walk (e.g. a crash between the two renames).
    Path(f"{state}.blobs").write_bytes(os.urandom(64))
    assert not WalkCache(state).has_previous
    again, p2 = walk(root, state, full=False)
    assert again == first and p2.dirs_reused == 0
