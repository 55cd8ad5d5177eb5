"""Alert rules (promtool), Alertmanager routing (amtool) and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from moodleops.exporters import dashboard
from moodleops.exporters.alerting import Delivery, alertmanager_config
from moodleops.exporters.storage_exporter import PoolPolicy, StorageExporter
from moodleops.exporters.storage_model import ScanConfig

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
    tests = sorted(RULES.glob("*_test.yml"))
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
