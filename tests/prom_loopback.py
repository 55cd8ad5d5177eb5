"""Real Prometheus and Alertmanager processes of a test's own, on loopback, and
the few calls the tests make to them. Fixtures built on these are in
tests/monitoring/conftest.py; tests/incident uses them directly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml
from moodleops.exporters.alerting import Delivery, alertmanager_config

from moodleops.inventory import Inventory

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def promql(base: str, query: str) -> list[dict[str, Any]]:
    got = requests.get(f"{base}/api/v1/query", params={"query": query}, timeout=5).json()
    assert got["status"] == "success", (query, got)
    return list(got["data"]["result"])


def wait_for(base: str, query: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The query's series once there are some, or [] after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = promql(base, query)
        except requests.RequestException:
            result = []
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def _wait_ready(base: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/-/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{base} not ready after {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def running_alertmanager(inv: Inventory, workdir: Path) -> Iterator[str]:
    """A real Alertmanager with the routing generated from the inventory, delivering
    nowhere (webhooks to a closed loopback port), no cluster port. Yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = alertmanager_config(inv, ["sysadmins@example.invalid"],
                              Delivery(webhook_base=f"http://127.0.0.1:{free_port()}"), group_wait="1s")
    (workdir / "am.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={workdir / 'am.yml'}",
                             f"--storage.path={workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        yield base
    finally:
        _stop(proc)


def post_alerts(base: str, *alerts: dict[str, Any]) -> None:
    """Alerts as Prometheus sends them: {"labels": ..., "annotations": ...} (annotations optional)."""
    body = [{"labels": a["labels"], "annotations": a.get("annotations") or {"summary": "test"}} for a in alerts]
    assert requests.post(f"{base}/api/v2/alerts", json=body, timeout=5).status_code == 200


def wait_active(base: str, alertname: str, timeout_s: float = 15) -> list[dict[str, Any]]:
    """Alertmanager's active alerts of that name, once it holds some."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = requests.get(f"{base}/api/v2/alerts", params={"filter": f'alertname="{alertname}"'},
                           timeout=5).json()
        active = [a for a in got if a.get("status", {}).get("state") == "active"]
        if active or time.monotonic() > deadline:
            return active
        time.sleep(0.3)


@contextmanager
def running_prometheus(workdir: Path, config: dict[str, Any], rule_files: dict[str, Any] | None = None
                       ) -> Iterator[str]:
    """A real Prometheus with that configuration and those rule files (name -> YAML
    document), its data in workdir. Yields its URL once it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, doc in (rule_files or {}).items():
        (workdir / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": list(rule_files or {})}))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, 60)
        yield base
    finally:
        _stop(proc)
