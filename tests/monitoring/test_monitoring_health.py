"""The monitoring part of `platform status` stays quick and clear when the
exporter or Prometheus is down, hangs, or is something else."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory, load_inventory
from moodleops.platform.monitoring_health import (
    ROLE_DEFAULTS,
    TIMEOUT_S,
    MonitoringEndpoints,
    check_monitoring,
    endpoints,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Canned(BaseHTTPRequestHandler):
    """Answers every path with the body of `routes` whose key prefixes it."""

    routes: ClassVar[dict[str, tuple[int, str]]] = {}

    def do_GET(self) -> None:
        status, body = next((v for k, v in self.routes.items() if self.path.startswith(k)), (404, ""))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def start(routes: dict[str, tuple[int, str]]) -> str:
        handler = type("H", (Canned,), {"routes": routes})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_endpoints_are_the_roles_variables_as_ansible_computes_them(local_inventory: Inventory,
                                                                    tmp_path: Path) -> None:
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    ep = endpoints(local_inventory)
    assert ep.exporter == f"http://{defaults['monitoring_listen_address']}:{defaults['monitoring_exporter_port']}"
    assert ep.prometheus.endswith(f":{defaults['monitoring_prometheus_port']}")
    root = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns("production"))
    gv = root / "local/group_vars/all.yml"
    gv.write_text(gv.read_text() + "\nmonitoring_listen_address: '::1'\n"
                  "monitoring_exporter_port: \"{{ 19000 + 852 }}\"\n")
    assert endpoints(load_inventory(str(root / "local"))).exporter == "http://[::1]:19852"


def test_nothing_listening_is_two_clear_problems_quickly() -> None:
    ep = MonitoringEndpoints(exporter=f"http://127.0.0.1:{closed_port()}",
                             prometheus=f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    _, problems, _ = check_monitoring(ep)
    assert time.monotonic() - t0 < 2 * TIMEOUT_S
    assert len(problems) == 2
    assert "storage exporter" in problems[0] and ep.exporter in problems[0]
    assert "Prometheus" in problems[1] and ep.prometheus in problems[1]


def test_hanging_daemon_is_bounded_by_the_timeout() -> None:
    with socket.socket() as hang:   # accepts (backlog) and never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(4)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}"
        t0 = time.monotonic()
        _, problems, _ = check_monitoring(MonitoringEndpoints(exporter=url, prometheus=url))
        assert time.monotonic() - t0 < 2 * TIMEOUT_S + 2
    assert len(problems) == 2 and all("ReadTimeout" in p for p in problems)


def targets(*items: dict[str, object]) -> str:
    return json.dumps({"status": "success", "data": {"activeTargets": list(items)}})


def test_healthy_stale_down_and_wrong_daemon(serve) -> None:  # type: ignore[no-untyped-def]
    metrics = "moodleops_exporter_up 1.0\nmoodleops_exporter_stale 0.0\n"
    exp = serve({"/metrics": (200, metrics)})
    up = {"labels": {"job": "moodle_storage"}, "scrapeUrl": f"{exp}/metrics", "health": "up"}
    lines, problems, warnings = check_monitoring(MonitoringEndpoints(exp, serve({"/api/v1/targets": (200, targets(up))})))
    assert not problems and not warnings
    assert any("up" in ln for ln in lines)

    stale = serve({"/metrics": (200, metrics.replace("stale 0.0", "stale 1.0"))})
    down = {**up, "health": "down", "lastError": "connection refused"}
    _, problems, warnings = check_monitoring(MonitoringEndpoints(stale, serve({"/api/v1/targets": (200, targets(down))})))
    assert warnings == ["storage exporter data is stale: its last scans failed (see its log)"]
    assert problems == [f"Prometheus cannot scrape {exp}/metrics: connection refused"]

    other = serve({"/metrics": (200, "go_goroutines 8\n"), "/api/v1/targets": (200, targets(
        {"labels": {"job": "node"}, "scrapeUrl": "x", "health": "up"}))})
    _, problems, _ = check_monitoring(MonitoringEndpoints(other, other))
    assert "without the storage exporter's metrics" in problems[0]
    assert "no job 'moodle_storage'" in problems[1]

    broken = serve({"/metrics": (500, ""), "/api/v1/targets": (200, "not json")})
    _, problems, _ = check_monitoring(MonitoringEndpoints(broken, broken))
    assert len(problems) == 2 and "HTTPError" in problems[0]
