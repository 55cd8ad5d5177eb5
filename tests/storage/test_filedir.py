"""The filedir walk and its merge with the database's hashes, on a planted
directory tree: orphans, missing contents, young blobs, junk names and
entries that cannot be read."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from moodleops.exporters.filedir import EMPTY_HASH, FiledirMerge, walk_filedir


def h(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def plant(root: Path, content: str, *, age_s: float = 7200) -> str:
    digest = h(content)
    d = root / digest[:2] / digest[2:4]
    d.mkdir(parents=True, exist_ok=True)
    (d / digest).write_text(content)
    t = time.time() - age_s
    os.utime(d / digest, (t, t))
    return digest


def test_walk_is_in_hash_order_and_skips_non_blobs(tmp_path: Path) -> None:
    hashes = sorted(plant(tmp_path, f"blob {i}") for i in range(40))
    (tmp_path / "warning.txt").write_text("do not touch")
    (tmp_path / "jackpot").mkdir()
    (tmp_path / hashes[0][:2] / hashes[0][2:4] / (hashes[0] + ".tmp")).write_text("partial")
    errors: list[str] = []
    assert [b.hash for b in walk_filedir(tmp_path, errors)] == hashes
    assert errors == []


def test_merge_counts_orphans_missing_and_spares_young_blobs(tmp_path: Path) -> None:
    filedir, trash = tmp_path / "filedir", tmp_path / "trashdir"
    filedir.mkdir()
    referenced = {plant(filedir, f"kept {i}"): len(f"kept {i}") for i in range(10)}
    orphans = [plant(filedir, f"orphan {i}") for i in range(3)]
    young = plant(filedir, "just written, row not committed yet", age_s=0)
    plant(filedir, "")                                   # sha1(''): Moodle keeps it forever
    missing = {h("gone"): 4, h("gone too"): 8}
    in_trash = plant(trash, "deleted after the snapshot")
    merge = FiledirMerge(filedir, trash, cutoff=time.time() - 600)
    db = {**referenced, **missing, in_trash: 26}
    for digest in sorted(db):
        merge.see(digest, db[digest])
    stats = merge.finish()
    assert stats.orphan_blobs == 3
    assert stats.orphan_bytes == sum(len(f"orphan {i}") for i in range(3))
    assert stats.recent_unreferenced == 1
    assert (stats.missing_blobs, stats.missing_bytes) == (2, 12)
    assert stats.missing_in_trash == 1
    assert stats.blobs == 10 + 3 + 1 + 1
    assert young not in orphans and EMPTY_HASH not in orphans
    assert stats.errors == []


def test_unreadable_entries_are_reported_and_the_walk_goes_on(tmp_path: Path) -> None:
    good = sorted(plant(tmp_path, f"good {i}") for i in range(5))
    # A blob whose target vanished (dangling symlink): stat fails.
    dangling = h("dangling")
    d = tmp_path / dangling[:2] / dangling[2:4]
    d.mkdir(parents=True, exist_ok=True)
    (d / dangling).symlink_to(tmp_path / "nowhere")
    # A first-level entry that is a file, not a directory.
    bad_level = next(f"{i:02x}" for i in range(256) if not (tmp_path / f"{i:02x}").exists())
    (tmp_path / bad_level).write_text("not a directory")
    # A second-level directory that cannot be listed (mode 000; root bypasses
    # permissions, so for root a directory replaced by a file stands in).
    locked = h("locked")
    ld = tmp_path / locked[:2] / locked[2:4]
    if os.geteuid() == 0:
        ld.parent.mkdir(parents=True, exist_ok=True)
        if not ld.exists():
            ld.write_text("x")
    else:
        ld.mkdir(parents=True, exist_ok=True)
        ld.chmod(0)
    errors: list[str] = []
    try:
        found = [b.hash for b in walk_filedir(tmp_path, errors)]
    finally:
        if ld.is_dir():
            ld.chmod(0o755)
    assert found == [g for g in good]
    assert any(dangling in e for e in errors)
    assert any(str(tmp_path / bad_level) in e and "not a directory" in e for e in errors)
    assert len(errors) >= 3


def test_missing_filedir_is_an_error_not_a_crash(tmp_path: Path) -> None:
    errors: list[str] = []
    assert list(walk_filedir(tmp_path / "absent", errors)) == []
    assert errors and "not a directory" in errors[0]
