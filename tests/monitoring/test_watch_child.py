"""The health and abuse reads in their child process: a database fault there is
the same one line here, a child that dies or goes silent is reported and
replaced, and the next read works again. No Moodle needed (a closed loopback
port stands for a database that is down)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from moodleops.exporters.storage_model import AccountPolicy, DbTarget
from moodleops.exporters.watch_child import ChildReader
from moodleops.exporters.watch_exporter import Thresholds, WatchExporter
from moodleops.exporters.watch_model import WatchConfig, WatchResult
from moodleops.exporters.watch_read import WatchError, read
from prom_loopback import free_port

MARKER = "MOODLEOPS_TEST_WATCH_CHILD"


def config(tmp: Path) -> WatchConfig:
    db = DbTarget(host="127.0.0.1", port=free_port(), dbname="moodle", user="ro", password="x", prefix="mdl_")
    return WatchConfig(db=db, schools=(), membership=AccountPolicy("cohort", "ut_school", "account_type", ("trainer",), 8, 31), pins=(), dataroot=tmp,
                       top_senders=5, online_window_s=300, watched_roles=(), connect_timeout_s=2,
                       statement_timeout_ms=100)


def dies_once(cfg: WatchConfig) -> WatchResult:
    """Dies the first time (a marker file says it did), reads fine afterwards."""
    marker = cfg.dataroot / "died"
    if not marker.exists():
        marker.touch()
        os._exit(3)
    return WatchResult(read_at=time.time())


def hangs(cfg: WatchConfig) -> WatchResult:
    time.sleep(3600)
    raise AssertionError("unreachable")


def test_a_database_fault_in_the_child_is_one_line_here(tmp_path: Path) -> None:
    child = ChildReader(read)
    try:
        with pytest.raises(WatchError, match=r"^cannot connect to ") as info:
            child(config(tmp_path))
        assert "\n" not in str(info.value)
        with pytest.raises(WatchError, match=r"^cannot connect to "):   # the same child, again
            child(config(tmp_path))
    finally:
        child.close()


def test_a_dead_child_is_reported_and_replaced(tmp_path: Path) -> None:
    child = ChildReader(dies_once)
    try:
        with pytest.raises(WatchError, match=r"died without a result \(exit status 3\)"):
            child(config(tmp_path))
        assert child(config(tmp_path)).read_at > 0
    finally:
        child.close()


def test_a_silent_child_is_killed_and_the_exporter_keeps_serving(tmp_path: Path) -> None:
    child = ChildReader(hangs, margin_s=1.0)
    cfg = config(tmp_path)
    ex = WatchExporter(cfg, Thresholds(200, 30, 900, 7), interval_s=5, reader=child)
    t0 = time.monotonic()
    assert not ex.read_once()
    assert time.monotonic() - t0 < 30
    st = ex.state()
    assert "silent for" in st.last_error and st.errors == 1
    assert b"moodleops_watch_up 0.0" in ex.exposition()
    assert child._proc is None   # killed, a new one for the next read
    child.close()


def test_the_exporter_reads_in_a_child_by_default(tmp_path: Path) -> None:
    ex = WatchExporter(dataclasses.replace(config(tmp_path)), Thresholds(200, 30, 900, 7), interval_s=5)
    try:
        assert not ex.read_once()
        assert ex.state().last_error.startswith("cannot connect to ")
        assert ex._child is not None and ex._child._proc is not None and ex._child._proc.pid != os.getpid()
    finally:
        ex.stop()
    assert ex._child._proc is None
