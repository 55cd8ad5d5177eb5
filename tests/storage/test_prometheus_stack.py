"""A real Prometheus (Debian package) on loopback scrapes the exporter and a
PromQL query returns the test school's value; the rules load in it."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
from moodleops.exporters.storage_model import ScanConfig
from prom_loopback import free_port
from storage_world import World

from moodleops import REPO_ROOT

pytestmark = pytest.mark.stack
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def test_prometheus_scrapes_and_promql_answers(world: World, scan_config: ScanConfig, tmp_path: Path) -> None:
    if not Path(PROMETHEUS).is_file():
        pytest.fail(f"{PROMETHEUS} is missing: install the Debian prometheus package")
    ex = StorageExporter(dataclasses.replace(scan_config, walk_filedir=False), PoolPolicy(0.8, 0.9),
                         interval_s=3600)
    assert ex.scan_once()
    expected = ex.state().result.school(world.schools[0].code).unique_bytes  # type: ignore[union-attr]
    server, _ = ex.serve("127.0.0.1", 0)
    target = f"127.0.0.1:{server.server_port}"   # type: ignore[attr-defined]
    shutil.copy(REPO_ROOT / "exporters" / "rules" / "storage.yml", tmp_path / "storage.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["storage.yml"],
        "scrape_configs": [{"job_name": "moodle_storage", "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1"
    query = f'moodle_storage_unique_bytes{{bucket="school",school="{world.schools[0].code}"}}'
    try:
        deadline = time.time() + 40
        got: list[dict[str, object]] = []
        while time.time() < deadline and not got:
            time.sleep(1)
            try:
                got = requests.get(f"{api}/query", params={"query": query}, timeout=2).json()["data"]["result"]
            except (requests.RequestException, KeyError, ValueError):
                continue
        assert got, f"Prometheus returned nothing for {query}"
        assert float(got[0]["value"][1]) == expected       # type: ignore[index]
        groups = requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"MoodleSchoolStorageAboveThreshold",
                                                                    "MoodleStorageDataStale"}
        up = requests.get(f"{api}/query", params={"query": 'up{job="moodle_storage"}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()   # type: ignore[attr-defined]
