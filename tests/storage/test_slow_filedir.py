"""filedir on a slow, then hung, network-like filesystem (a FUSE passthrough
adding a delay to every call, tests/storage/slowfs.py): the exporter publishes
the database figures before the walk ends, shows the walk's progress, walks
incrementally, and reports a hung call as a stuck walk instead of hanging."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
from moodleops.exporters.storage_model import ScanConfig
from storage_world import World
from test_exporter_stack import _render, samples, value
from test_filedir import plant
from test_filedir_incremental import age_dirs

pytestmark = pytest.mark.stack

SLOWFS = Path(__file__).with_name("slowfs.py")
DELAY_S = 0.005
DIRS, PER_DIR = 30, 12
BLOBS = DIRS * PER_DIR


@dataclass
class SlowFs:
    source: Path
    mount: Path
    hang: Path
    counter: Path

    def calls(self) -> int:
        time.sleep(0.5)   # the counter is rewritten every 0.2 s
        return int(self.counter.read_text().split()[1])


@pytest.fixture
def slowfs(tmp_path: Path) -> Iterator[SlowFs]:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: this machine cannot run the slow-filesystem tests")
    fs = SlowFs(tmp_path / "src", tmp_path / "mnt", tmp_path / "hang", tmp_path / "calls")
    fs.source.mkdir()
    fs.mount.mkdir()
    # 30 ab/cd directories of 12 blobs (names only matter to the walk).
    for d in range(DIRS):
        prefix = f"{d * 2053 % 65536:04x}"
        (fs.source / prefix[:2] / prefix[2:]).mkdir(parents=True, exist_ok=True)
        for i in range(PER_DIR):
            name = prefix + os.urandom(18).hex()
            (fs.source / prefix[:2] / prefix[2:] / name).write_bytes(b"x" * i)
    age_dirs(fs.source)
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(fs.source), str(fs.mount), str(DELAY_S), str(fs.hang),
                             str(fs.counter)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(fs.mount) or not fs.counter.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"slowfs did not mount: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.1)
        yield fs
    finally:
        fs.hang.unlink(missing_ok=True)
        subprocess.run(["fusermount", "-u", str(fs.mount)], capture_output=True, timeout=30, check=False)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_walk_on_a_slow_then_hung_filesystem(world: World, scan_config: ScanConfig, slowfs: SlowFs,
                                             tmp_path: Path) -> None:
    cfg = dataclasses.replace(scan_config, paths=dataclasses.replace(scan_config.paths, filedir=slowfs.mount),
                              walk_state=tmp_path / "walk", fs_call_timeout_s=3.0)
    ex = StorageExporter(cfg, PoolPolicy(0.8, 0.9), interval_s=900, walk_interval_s=0, full_walk_interval_s=3600)
    school = world.schools[0].code

    # 1. A full walk: the database figures are served while the walk still runs, and
    # the walk's progress moves.
    seen_running_with_figures = False
    ratios: set[float] = set()
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(ex.scan_once()))
    t.start()
    while t.is_alive():
        m = samples(_render(ex))
        if value(m, "moodleops_exporter_walk_running") == 1.0:
            if ("moodle_storage_unique_bytes", (("bucket", "school"), ("school", school))) in m:
                seen_running_with_figures = True
            ratios.add(value(m, "moodle_storage_filedir_walk_progress_ratio"))
        time.sleep(0.1)
    t.join()
    assert done == [True]
    assert seen_running_with_figures, "the school's figures were not served while the walk ran"
    assert len({r for r in ratios if 0 < r < 1}) >= 2, f"walk progress never moved: {sorted(ratios)}"
    full_calls = slowfs.calls()
    st = ex.state()
    assert st.filedir is not None and not st.filedir.incremental
    dirs = len({p.parent for p in slowfs.source.glob("*/*/*")})
    assert st.filedir.blobs == BLOBS and st.filedir.dirs_listed == dirs == DIRS
    m = samples(_render(ex))
    assert value(m, "moodle_storage_filedir_blobs") == BLOBS
    assert value(m, "moodle_storage_filedir_last_walk_incremental") == 0
    assert value(m, "moodleops_exporter_walk_stuck") == 0
    assert value(m, "moodle_storage_filesystem_size_bytes") > 0     # statvfs through the mount

    # 2. Two directories change: the next walk lists those two only, and finds what a
    # full walk would.
    added = plant(slowfs.source, "slow blob added")
    gone = next(p for p in sorted(slowfs.source.glob("*/*/*")) if p.name[:4] != added[:4])
    gone.unlink()
    assert ex.scan_once()
    inc_calls = slowfs.calls() - full_calls
    f = ex.state().filedir
    assert f is not None and f.incremental
    assert (f.blobs, f.dirs_listed) == (BLOBS, len({added[:4], gone.name[:4]}))
    assert f.dirs_reused == len([d for d in slowfs.source.glob("*/*") if d.is_dir()]) - f.dirs_listed
    # Each unchanged directory costs one stat instead of a listing and a stat per blob.
    assert inc_calls < full_calls / 4, (inc_calls, full_calls)
    assert value(samples(_render(ex)), "moodle_storage_filedir_last_walk_incremental") == 1

    # 3. The filesystem hangs: the scan comes back (database figures fresh), the walk is
    # reported stuck, and the last walk's figures stay served.
    slowfs.hang.touch()
    t0 = time.monotonic()
    assert ex.scan_once()
    waited = time.monotonic() - t0
    assert waited < cfg.fs_call_timeout_s + 60
    st = ex.state()
    assert st.walk_stuck and st.ok and "has not returned" in st.walk_stuck_detail
    m = samples(_render(ex))
    assert value(m, "moodleops_exporter_walk_stuck") == 1
    assert value(m, "moodleops_exporter_walk_stuck_total") == 1
    assert value(m, "moodleops_exporter_up") == 1
    assert value(m, "moodle_storage_filedir_blobs") == BLOBS
    assert ("moodle_storage_unique_bytes", (("bucket", "school"), ("school", school))) in m
    slowfs.hang.unlink()
    assert ex.scan_once() and not ex.state().walk_stuck
