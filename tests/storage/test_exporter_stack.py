"""The exporter process: scrapes read the cache, the database going away
marks the data stale and keeps the last values, and it recovers by itself."""

from __future__ import annotations

import dataclasses
import time

import pytest
import requests
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
from moodleops.exporters.storage_model import ScanConfig
from moodleops.exporters.storage_scan import scan
from prometheus_client.parser import text_string_to_metric_families
from storage_world import World
from tcp_forward import Forwarder

pytestmark = pytest.mark.stack


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def policy(local_inventory) -> PoolPolicy:  # type: ignore[no-untyped-def]
    p = local_inventory.platform
    return PoolPolicy(p.pool_warning_ratio, p.pool_critical_ratio)


def test_exporter_serves_the_scan_on_loopback(world: World, scan_config: ScanConfig, policy: PoolPolicy) -> None:
    cfg = dataclasses.replace(scan_config, walk_filedir=False)
    ex = StorageExporter(cfg, policy, interval_s=3600)
    server, _ = ex.serve("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"   # type: ignore[attr-defined]
    try:
        m = samples(requests.get(url, timeout=5).text)
        assert value(m, "moodleops_exporter_up") == 0 and value(m, "moodleops_exporter_stale") == 1
        assert ("moodle_storage_unique_bytes", (("bucket", "school"), ("school", world.schools[0].code))) not in m
        assert ex.scan_once()
        reference = scan(cfg).school(world.schools[0].code)
        timings = []
        for _ in range(20):
            t0 = time.perf_counter()
            body = requests.get(url, timeout=5).text
            timings.append(time.perf_counter() - t0)
        m = samples(body)
        a = world.schools[0].code
        assert value(m, "moodle_storage_unique_bytes", bucket="school", school=a) == reference.unique_bytes
        assert value(m, "moodle_storage_apportioned_bytes", bucket="school", school=a) == reference.apportioned_bytes
        assert value(m, "moodle_storage_school_alert_threshold_bytes", school=a) == world.schools[0].alert_bytes
        assert value(m, "moodle_storage_school_accounts_active", school=a) == 1
        assert value(m, "moodle_storage_pool_size_bytes") == cfg.pool_bytes
        assert value(m, "moodleops_exporter_up") == 1 and value(m, "moodleops_exporter_stale") == 0
        # 21 scrapes, one scan: scrapes never query.
        assert value(m, "moodleops_exporter_scans_total") == 1
        assert max(timings) < 0.5
        labels = {k for (_, lbls) in m for k, _ in lbls}
        assert labels <= {"bucket", "school", "where", "problem"}   # bounded: codes and fixed names
    finally:
        server.shutdown()   # type: ignore[attr-defined]


def test_database_outage_keeps_last_values_marked_stale_then_recovers(
        world: World, scan_config: ScanConfig, policy: PoolPolicy) -> None:
    fwd = Forwarder((scan_config.db.host, scan_config.db.port)).start()
    cfg = dataclasses.replace(scan_config, walk_filedir=False,
                              db=dataclasses.replace(scan_config.db, port=fwd.port))
    ex = StorageExporter(cfg, policy, interval_s=3600)
    a = world.schools[0].code
    try:
        assert ex.scan_once()
        good = ex.state().result
        assert good is not None
        fwd.stop()
        assert not ex.scan_once()
        st = ex.state()
        assert st.errors == 1 and not st.ok and ex.is_stale()
        assert f"127.0.0.1:{fwd.port}" in st.last_error
        m = samples(_render(ex))
        assert value(m, "moodleops_exporter_stale") == 1
        assert value(m, "moodleops_exporter_scan_errors_total") == 1
        assert value(m, "moodle_storage_unique_bytes", bucket="school", school=a) == good.school(a).unique_bytes
        fwd = Forwarder(fwd.target, fwd.port).start()      # the database comes back on the same address
        assert ex.scan_once()
        m = samples(_render(ex))
        assert value(m, "moodleops_exporter_stale") == 0 and value(m, "moodleops_exporter_up") == 1
        assert value(m, "moodleops_exporter_last_success_timestamp_seconds") >= st.last_attempt
    finally:
        fwd.stop()


def test_background_thread_scans_on_its_own(scan_config: ScanConfig, policy: PoolPolicy, unused_port: int) -> None:
    """A database that never answers: the thread keeps trying, never dies, counts errors."""
    cfg = dataclasses.replace(scan_config, walk_filedir=False,
                              db=dataclasses.replace(scan_config.db, port=unused_port))
    ex = StorageExporter(cfg, policy, interval_s=1)
    ex.start()
    try:
        deadline = time.time() + 10
        while ex.state().errors < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert ex.state().errors >= 2 and ex.state().result is None
    finally:
        ex.stop()


def _render(ex: StorageExporter) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ex.collector())
    return generate_latest(reg).decode()
