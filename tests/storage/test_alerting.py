"""Alert rules (promtool), Alertmanager routing (amtool) and the dashboard."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
import requests
import yaml
from moodleops.exporters import dashboard
from moodleops.exporters.alerting import Delivery, alertmanager_config
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
from moodleops.exporters.storage_model import ScanConfig
from prom_loopback import free_port

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory

RULES = REPO_ROOT / "exporters" / "rules"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_rules_are_valid() -> None:
    proc = run(PROMTOOL, "check", "rules", str(RULES / "storage.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    tests = sorted(RULES.glob("storage*_test.yml"))   # moodle_test.yml: tests/monitoring
    proc = run(PROMTOOL, "test", "rules", *map(str, tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load((RULES / "storage.yml").read_text())["groups"]
              for r in g["rules"]}
    firing, quiet = set(), set()
    for t in tests:
        for case in yaml.safe_load(t.read_text())["tests"]:
            for a in case["alert_rule_test"]:
                (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    assert firing == alerts and quiet == alerts


def test_alertmanager_routes_schools_to_referents(local_inventory: Inventory, tmp_path: Path) -> None:
    cfg = alertmanager_config(local_inventory, ["sysadmins@example.invalid"],
                              Delivery(smtp_smarthost="127.0.0.1:25", smtp_from="moodle@example.invalid"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run(AMTOOL, "check-config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    school = local_inventory.schools[3]
    routed = run(AMTOOL, "config", "routes", "test", f"--config.file={path}", "scope=school",
                 f"school={school.code}", "alertname=MoodleSchoolStorageAboveThreshold")
    assert routed.stdout.split() == [f"school-{school.code}"]
    receiver = next(r for r in cfg["receivers"] if r["name"] == f"school-{school.code}")
    assert receiver["email_configs"][0]["to"] == ", ".join(school.referents)
    for labels in (["scope=pool", "alertname=MoodleStoragePoolAboveCritical"],
                   ["scope=school", "school=not_a_school", "alertname=MoodleSchoolStorageAboveThreshold"]):
        routed = run(AMTOOL, "config", "routes", "test", f"--config.file={path}", *labels)
        assert routed.stdout.split() == ["sysadmins"]


def test_alert_delivery_needs_a_destination(local_inventory: Inventory) -> None:
    with pytest.raises(ValueError):
        Delivery()
    with pytest.raises(ValueError):
        alertmanager_config(local_inventory, [], Delivery(webhook_base="http://127.0.0.1:9"))


def test_committed_dashboard_is_the_generated_one() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render(), \
        "run: python -m moodleops.exporters.dashboard"


@pytest.mark.stack
def test_dashboard_and_rules_only_use_emitted_metrics(scan_config: ScanConfig) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    ex = StorageExporter(scan_config, PoolPolicy(0.8, 0.9), interval_s=900)
    assert ex.scan_once()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ex.collector())
    emitted = {line.split("{")[0].split(" ")[0] for line in generate_latest(reg).decode().splitlines()
               if line and not line.startswith("#")}
    emitted.add("up")
    exprs = [t["expr"] for p in json.loads(dashboard.OUTPUT.read_text())["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load((RULES / "storage.yml").read_text())["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:moodle_storage|moodleops_exporter)_[a-z_]+|up)\b", e)}
    assert used and used <= emitted, sorted(used - emitted)


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Stands in for e-mail: records which receiver got which alert names."""

    got: ClassVar[list[tuple[str, list[str]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.got.append((self.path.strip("/"), [a["labels"].get("school", "") for a in body["alerts"]]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.stack
def test_a_real_alertmanager_delivers_a_school_alert_to_its_referents_only(
        local_inventory: Inventory, provisioned: object, tmp_path: Path) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = free_port()
    cfg = alertmanager_config(local_inventory, ["sysadmins@example.invalid"],
                              Delivery(webhook_base=f"http://127.0.0.1:{receiver.server_port}"), group_wait="1s")
    (tmp_path / "am.yml").write_text(yaml.safe_dump(cfg))
    am = subprocess.Popen(["/usr/bin/prometheus-alertmanager", f"--config.file={tmp_path / 'am.yml'}",
                           f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                           "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    school = local_inventory.schools[5]
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        alerts = [{"labels": {"alertname": "MoodleSchoolStorageAboveThreshold", "scope": "school",
                              "school": school.code, "severity": "warning"}},
                  {"labels": {"alertname": "MoodleStoragePoolAboveWarning", "scope": "pool", "severity": "warning"}}]
        assert requests.post(f"{base}/api/v2/alerts", json=alerts, timeout=5).status_code == 200
        while time.monotonic() < deadline and len(_Receiver.got) < 2:
            time.sleep(0.3)
    finally:
        am.terminate()
        am.wait(timeout=10)
        receiver.shutdown()
    assert sorted(_Receiver.got) == sorted([(f"school-{school.code}", [school.code]), ("sysadmins", [""])])
