"""The monitoring role on the local stack: after site.yml, Prometheus really
scrapes the installed storage exporter, a PromQL query answers per school with
the inventory's figures, Alertmanager runs with the generated routing, and
node-exporter answers, all on loopback only."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
import requests
from prom_loopback import wait_for

from moodleops.inventory import Inventory
from moodleops.platform.ansible import PlaybookResult
from moodleops.platform.monitoring_health import check_monitoring, endpoints, monitoring_settings

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def mon(local_inventory: Inventory, provisioned: PlaybookResult | None) -> dict[str, Any]:
    s = monitoring_settings(local_inventory)
    host = s["monitoring_listen_address"]
    return {"settings": s, **{name: f"http://{host}:{int(s[f'monitoring_{name}_port'])}"
                              for name in ("exporter", "prometheus", "alertmanager", "node_exporter")}}


def test_prometheus_scrapes_the_exporter_per_school(mon: dict[str, Any], local_inventory: Inventory) -> None:
    up = wait_for(mon["prometheus"], 'up{job="moodle_storage"} == 1')
    assert up, "Prometheus does not see the storage exporter up"
    assert up[0]["metric"]["instance"] == mon["exporter"].removeprefix("http://")
    for school in (local_inventory.schools[0], local_inventory.schools[-1]):
        q = f'moodle_storage_school_alert_threshold_bytes{{school="{school.code}"}}'
        got = wait_for(mon["prometheus"], q)
        assert got, f"no answer for {q}"
        assert float(got[0]["value"][1]) == school.alert_bytes
        # The usage series exists for the same school (its value depends on others' data).
        assert wait_for(mon["prometheus"], f'moodle_storage_unique_bytes{{bucket="school",school="{school.code}"}}')
    pool = wait_for(mon["prometheus"], "moodle_storage_pool_size_bytes")
    assert float(pool[0]["value"][1]) == local_inventory.platform.pool_bytes
    fresh = wait_for(mon["prometheus"], "moodleops_exporter_stale == 0")
    assert fresh, "the installed exporter's data is stale: its scans fail"


def test_rules_and_alertmanager_are_loaded(mon: dict[str, Any], local_inventory: Inventory) -> None:
    groups = requests.get(f"{mon['prometheus']}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"MoodleSchoolStorageAboveThreshold", "MoodleStorageExporterDown"} <= names
    assert all(r.get("health") != "err" for g in groups for r in g["rules"])
    deadline = time.monotonic() + 30
    while True:
        ams = requests.get(f"{mon['prometheus']}/api/v1/alertmanagers", timeout=5).json()["data"]
        urls = [a["url"] for a in ams["activeAlertmanagers"]]
        if urls or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(u.startswith(mon["alertmanager"]) for u in urls), urls

    assert requests.get(f"{mon['alertmanager']}/-/ready", timeout=5).status_code == 200
    status = requests.get(f"{mon['alertmanager']}/api/v2/status", timeout=5).json()
    original = status["config"]["original"]
    for school in local_inventory.schools:
        assert f"school-{school.code}" in original
    # Local stack: every receiver posts to a loopback webhook; no e-mail at all.
    webhook = mon["settings"]["monitoring_alertmanager_webhook"]
    assert webhook.startswith("http://127.0.0.1:") and f"{webhook}/sysadmins" in original
    assert "email_configs" not in original and "smtp_smarthost" not in original


def test_watch_and_stock_exporters_are_scraped(mon: dict[str, Any]) -> None:
    for job, metric in (("moodle_watch", "moodle_cron_lag_seconds"), ("postgres", "pg_up"),
                        ("nginx", "nginx_connections_active"), ("process", "namedprocess_namegroup_num_procs")):
        assert wait_for(mon["prometheus"], f'up{{job="{job}"}} == 1', 90), f"Prometheus does not scrape {job}"
        assert wait_for(mon["prometheus"], f'{metric}{{job="{job}"}}', 30), f"no {metric} from {job}"
    assert wait_for(mon["prometheus"], 'namedprocess_namegroup_num_procs{groupname="nginx"} > 0', 30)
    assert float(wait_for(mon["prometheus"], 'pg_up{job="postgres"}', 30)[0]["value"][1]) == 1


def test_node_exporter_answers(mon: dict[str, Any]) -> None:
    body = requests.get(f"{mon['node_exporter']}/metrics", timeout=5).text
    assert "node_filesystem_avail_bytes" in body
    assert wait_for(mon["prometheus"], 'up{job="node"} == 1')


def test_everything_listens_on_loopback_only(mon: dict[str, Any]) -> None:
    s = mon["settings"]
    ports = {int(s[f"monitoring_{n}_port"]) for n in ("exporter", "prometheus", "alertmanager", "node_exporter",
                                                      "watch", "postgres_exporter", "nginx_exporter",
                                                      "process_exporter", "nginx_status")}
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout.split("\n")
    seen: dict[int, list[str]] = {}
    for line in listening:
        fields = line.split()
        if len(fields) >= 4:
            addr, _, port = fields[3].rpartition(":")
            if port.isdigit() and int(port) in ports:
                seen.setdefault(int(port), []).append(addr)
    assert set(seen) == ports, f"not listening: {ports - set(seen)}"
    assert all(a in ("127.0.0.1", "[::1]") for addrs in seen.values() for a in addrs), seen
    # No Alertmanager cluster (gossip) port either.
    assert not any(line.split()[3].endswith(":9094") for line in listening if len(line.split()) >= 4)


def test_platform_status_reports_monitoring(local_inventory: Inventory, provisioned: PlaybookResult | None) -> None:
    ep = endpoints(local_inventory)
    deadline = time.monotonic() + 60
    while True:
        lines, problems, warnings = check_monitoring(ep)
        if (not problems and not warnings) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not problems, problems
    assert any("moodle_storage" in ln and " up" in ln for ln in lines), lines
    out = subprocess.run([".venv/bin/moodleops", "platform", "status"], capture_output=True, text=True, check=False,
                         timeout=300, cwd=str(local_inventory.root.parent))
    assert f"Exporter {ep.exporter}/metrics answers" in out.stdout, out.stdout + out.stderr
    assert f"Prometheus {ep.prometheus}: job moodle_storage" in out.stdout
