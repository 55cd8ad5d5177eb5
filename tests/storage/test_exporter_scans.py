"""How the exporter runs scans: one at a time, and a scan process that crashes
is counted as an error, never taken down with it."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter, scan_in_child
from moodleops.exporters.storage_model import AccountPolicy, DbTarget, ScanConfig, ScanResult, StoragePaths


def test_concurrent_requests_never_run_two_scans(tmp_path: Path) -> None:
    cfg = ScanConfig(db=DbTarget("127.0.0.1", 1, "none", "none", "", "mdl_"), schools=(),
                     paths=StoragePaths.defaults(tmp_path), pool_bytes=1,
                     accounts=AccountPolicy("cohort", "", "", (), 8, 31))
    running = 0
    most = 0
    guard = threading.Lock()

    def slow_failing_scan(cfg: ScanConfig) -> ScanResult:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with guard:
            running -= 1
        raise RuntimeError("no database in this test")

    ex = StorageExporter(cfg, PoolPolicy(0.8, 0.9), scanner=slow_failing_scan)
    threads = [threading.Thread(target=ex.scan_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1 and ex.state().scans == 4 and ex.state().errors == 4


@pytest.mark.stack
def test_scan_runs_in_another_process_and_a_crash_there_is_an_error(scan_config: ScanConfig) -> None:
    cfg = dataclasses.replace(scan_config, walk_filedir=False)
    result = scan_in_child(cfg)
    assert result.pool.distinct_blobs > 0
    # A bug in the scan (here: a school that is not a SchoolSpec) crashes the child only.
    broken = dataclasses.replace(cfg, schools=(None,))   # type: ignore[arg-type]
    ex = StorageExporter(broken, PoolPolicy(0.8, 0.9))
    assert not ex.scan_once()
    st = ex.state()
    assert st.errors == 1 and not st.ok and ex.is_stale()
    assert "crashed" in st.last_error and "AttributeError" in st.last_error


def test_data_paths_are_asked_again_until_moodle_answers(tmp_path: Path) -> None:
    """At start-up Moodle could not tell its data paths (defaults used): each scan asks
    again, and once it answers its paths are used and it is not asked any more."""
    defaults = StoragePaths.defaults(tmp_path / "guess")
    real = StoragePaths.defaults(tmp_path / "moodledata")
    cfg = ScanConfig(db=DbTarget("127.0.0.1", 1, "none", "none", "", "mdl_"), schools=(), paths=defaults,
                     pool_bytes=1, accounts=AccountPolicy("cohort", "", "", (), 8, 31))
    answers = [None, real]
    asked: list[int] = []
    seen: list[Path] = []

    def source() -> StoragePaths | None:
        asked.append(1)
        return answers.pop(0)

    def scanner(c: ScanConfig) -> ScanResult:
        seen.append(c.paths.filedir)
        raise RuntimeError("no database in this test")

    ex = StorageExporter(cfg, PoolPolicy(0.8, 0.9), scanner=scanner, paths_source=source)
    for _ in range(3):
        ex.scan_once()
    assert seen == [defaults.filedir, real.filedir, real.filedir] and len(asked) == 2
