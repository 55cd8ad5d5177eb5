"""The health and abuse exporter's rules (promtool), their routing (amtool),
the dashboards (built and parsed back with grafana-foundation-sdk), the pin
clock, the inventory's watch section and --users-from-alert against a real
Alertmanager. No Moodle needed here: tests/monitoring/test_watch_stack.py has
the ones against the local stack."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel
from moodleops.exporters import dashboard
from moodleops.exporters.alerting import Delivery, alertmanager_config
from moodleops.exporters.watch_exporter import PinTracker
from moodleops.exporters.watch_read import source_class
from prom_loopback import free_port, post_alerts

from moodleops import REPO_ROOT
from moodleops.errors import ExitStatus
from moodleops.incident.alert_scope import schools_of_alert, users_of_alert
from moodleops.incident.errors import IncidentError
from moodleops.inventory import Inventory, InventoryError, load_inventory

RULES = REPO_ROOT / "exporters" / "rules"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"


def edit_yaml(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def rules(name: str = "moodle") -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((RULES / f"{name}.yml").read_text())["groups"] for r in g["rules"]]


# moodle.yml: the watch exporter's; hosts.yml: every host's node-exporter and the replica.
@pytest.mark.parametrize("name", ["moodle", "hosts"])
def test_rules_are_valid_and_each_alert_fires_and_stays_quiet_in_promtool(name: str) -> None:
    proc = run(PROMTOOL, "check", "rules", str(RULES / f"{name}.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(PROMTOOL, "test", "rules", str(RULES / f"{name}_test.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for r in rules(name)}
    firing, quiet = set(), set()
    for case in yaml.safe_load((RULES / f"{name}_test.yml").read_text())["tests"]:
        for a in case["alert_rule_test"]:
            (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    assert firing == alerts and quiet == alerts


def test_every_alert_names_its_runbook_with_the_real_cli_verbs() -> None:
    from moodleops.cli import build_parser

    for r in rules() + rules("hosts"):
        assert r["annotations"].get("runbook"), r["alert"]
        assert r["labels"]["scope"] in ("security", "platform", "exporter"), r["alert"]
    by_name = {r["alert"]: r["annotations"]["runbook"] for r in rules()}
    # The commands shown must parse with the real CLI (placeholders filled in).
    for name in ("MoodleMassMailingByUser", "MoodleFailedLoginBurst", "MoodleNewSiteAdministrator"):
        cmd = by_name[name]
        cmd = cmd[cmd.index("moodleops "):].split("   (")[0]
        cmd = re.sub(r"\{\{ \$labels\.school \}\}", "ifms_lot", cmd)
        cmd = re.sub(r"\{\{ \$labels\.username \}\}", "abc1234d", cmd)
        argv = shlex.split(cmd)[1:]
        args = build_parser().parse_args(argv)
        assert args.area == "incident", cmd
    assert "messaging suspend" in by_name["MoodleMassMailingByUser"]
    assert "incident suspend --school-from-alert MoodleFailedLoginBurst" in by_name["MoodleFailedLoginBurst"]


def test_security_alerts_reach_sysadmins_and_the_school_referents(local_inventory: Inventory,
                                                                 tmp_path: Path) -> None:
    cfg = alertmanager_config(local_inventory, ["sysadmins@example.invalid"],
                              Delivery(smtp_smarthost="127.0.0.1:25", smtp_from="moodle@example.invalid"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert run(AMTOOL, "check-config", str(path)).returncode == 0
    school = local_inventory.schools[2]

    def routed(*labels: str) -> list[str]:
        out = run(AMTOOL, "config", "routes", "test", f"--config.file={path}", *labels).stdout
        return out.strip().split(",")

    assert sorted(routed("scope=security", f"school={school.code}", "alertname=MoodleMassMailingByUser",
                         "username=abc1234d")) == sorted(["sysadmins", f"school-{school.code}"])
    assert routed("scope=security", "school=unknown", "alertname=MoodleFailedLoginBurst") == ["sysadmins"]
    assert routed("scope=platform", "alertname=MoodleCronStuck") == ["sysadmins"]
    # Storage stays as it was: a school's storage alert to its referents only.
    assert routed("scope=school", f"school={school.code}",
                  "alertname=MoodleSchoolStorageAboveThreshold") == [f"school-{school.code}"]


@pytest.mark.parametrize("name", sorted(dashboard.DASHBOARDS))
def test_committed_dashboards_are_the_generated_ones_and_parse_with_the_sdk(name: str) -> None:
    committed = dashboard.path_of(name).read_text()
    assert committed == dashboard.render(name), "run: python -m moodleops.exporters.dashboard"
    doc = json.loads(committed)
    model = DashboardModel.from_json(doc)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert again == doc, "the SDK does not read the dashboard back as written"
    ids = [p["id"] for p in doc["panels"]]
    assert len(set(ids)) == len(ids)
    for p in doc["panels"]:
        assert p["targets"] and all(t["expr"] and t["datasource"]["type"] == "prometheus" for t in p["targets"])
        assert p["gridPos"]["w"] > 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_the_monitoring_role_provisions_every_dashboard_and_rule_file() -> None:
    defaults = yaml.safe_load((REPO_ROOT / "playbooks/roles/monitoring/defaults/main.yml").read_text())
    assert sorted(defaults["monitoring_grafana_dashboards"]) == sorted(f"{n}.json" for n in dashboard.DASHBOARDS)
    assert set(defaults["monitoring_rule_files"]) == {p.name for p in RULES.glob("*.yml")
                                                     if not p.name.endswith("_test.yml")}


def test_source_address_classes_are_bounded() -> None:
    assert source_class("127.0.0.1") == "loopback" and source_class("::1") == "loopback"
    assert source_class("::ffff:127.0.0.2") == "loopback"
    assert source_class("10.1.2.3") == source_class("192.168.0.9") == "private"
    assert source_class("8.8.8.8") == "public"
    assert source_class("") == source_class("not an ip") == "unknown"


def test_pin_clock_survives_a_restart_and_restarts_with_a_new_pin(tmp_path: Path) -> None:
    state = tmp_path / "pins.json"
    t = PinTracker(state)
    assert t.update({"core": "2022112811.00", "mod_x": "2023010100"},
                    {"core": "2022112811", "mod_x": "2022010100"}, 1000.0) == {"mod_x": 1000.0}
    again = PinTracker(state)          # the exporter restarted
    assert again.update({"mod_x": "2023010100"}, {"mod_x": "2022010100"}, 5000.0) == {"mod_x": 1000.0}
    assert again.update({"mod_x": "2024010100"}, {"mod_x": "2022010100"}, 6000.0) == {"mod_x": 6000.0}
    assert again.update({"mod_x": "2024010100"}, {}, 7000.0) == {"mod_x": 6000.0}   # not installed at all
    assert again.update({"mod_x": "2024010100"}, {"mod_x": "2024010100"}, 8000.0) == {}
    assert json.loads(state.read_text()) == {}
    state.write_text("{not json")
    assert PinTracker(state).update({"core": "1"}, {"core": "2"}, 9.0) == {"core": 9.0}


def test_inventory_watch_section_is_validated(tmp_path: Path) -> None:
    inv = load_inventory("local")
    assert inv.platform.watch.mass_mailing_per_hour > 0 and inv.platform.watch.top_senders <= 20
    root = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns(".secrets", "vault.yml"))
    for key, value, expected in (("mass_mailing_per_hour", 0, "watch.mass_mailing_per_hour"),
                                 ("top_senders", 500, "watch.top_senders"),
                                 ("watched_roles", ["Manager!"], "watch.watched_roles[0]"),
                                 ("typo_key", 1, "watch.typo_key")):
        edit_yaml(root / "platform.yml", lambda d, k=key, v=value: d["watch"].__setitem__(k, v))
        with pytest.raises(InventoryError) as info:
            load_inventory("local", root=root)
        assert info.value.key == expected, str(info.value)
        shutil.copy(REPO_ROOT / "inventory" / "platform.yml", root / "platform.yml")


def test_users_of_a_firing_alert_come_from_alertmanager(alertmanager: str) -> None:
    with pytest.raises(IncidentError, match="no active alert"):
        users_of_alert(alertmanager, "MoodleMassMailingByUser")
    post_alerts(alertmanager,
                {"labels": {"alertname": "MoodleMassMailingByUser", "scope": "security", "school": "ifms_lot",
                            "username": "abc1234d"}},
                {"labels": {"alertname": "MoodleMassMailingByUser", "scope": "security", "school": "ifms_albi",
                            "username": "xyz9876q"}},
                {"labels": {"alertname": "MoodleFailedLoginBurst", "scope": "security", "school": "ifms_lot"}})
    deadline = time.monotonic() + 10
    while True:
        try:
            got = users_of_alert(alertmanager, "MoodleMassMailingByUser")
            break
        except IncidentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    assert got == ["abc1234d", "xyz9876q"]
    with pytest.raises(IncidentError, match="none with a username label"):
        users_of_alert(alertmanager, "MoodleFailedLoginBurst")
    with pytest.raises(IncidentError, match="not an alert name"):
        users_of_alert(alertmanager, 'x"} or {a="')


def test_schools_of_a_firing_alert_come_from_alertmanager(alertmanager: str, local_inventory: Inventory) -> None:
    known = {s.code for s in local_inventory.schools}
    one, two = local_inventory.schools[0].code, local_inventory.schools[1].code
    with pytest.raises(IncidentError, match="--school-from-alert MoodleFailedLoginBurst: no active alert"):
        schools_of_alert(alertmanager, "MoodleFailedLoginBurst", known)
    burst = {"alertname": "MoodleFailedLoginBurst", "scope": "security"}
    # Failed logins for usernames Moodle does not have: school label "unknown", never a scope.
    post_alerts(alertmanager, {"labels": {**burst, "school": "unknown"}})
    deadline = time.monotonic() + 10
    while True:
        try:
            schools_of_alert(alertmanager, "MoodleFailedLoginBurst", known)
        except IncidentError as exc:
            if "only for unknown" in str(exc) or time.monotonic() > deadline:
                assert "only for unknown (no school to suspend)" in str(exc)
                break
        time.sleep(0.3)
    post_alerts(alertmanager, {"labels": {**burst, "school": two}}, {"labels": {**burst, "school": one}},
                {"labels": {"alertname": "MoodleMassMailingByUser", "scope": "security", "school": "ifsi_x",
                            "username": "abc1234d"}})
    deadline = time.monotonic() + 10
    while (got := schools_of_alert(alertmanager, "MoodleFailedLoginBurst", known))[0] != sorted([one, two]):
        assert time.monotonic() < deadline, got
        time.sleep(0.3)
    assert got == (sorted([one, two]), ["unknown"])
    # A school label this inventory does not know: refused, not silently dropped.
    post_alerts(alertmanager, {"labels": {**burst, "school": "not_a_school_here"}})
    deadline = time.monotonic() + 10
    while True:
        try:
            schools_of_alert(alertmanager, "MoodleFailedLoginBurst", known)
        except IncidentError as exc:
            assert "not_a_school_here is not a school of this inventory" in str(exc)
            break
        assert time.monotonic() < deadline, "the unknown school label was accepted"
        time.sleep(0.3)
    with pytest.raises(IncidentError, match="--school-from-alert 'a b': not an alert name"):
        schools_of_alert(alertmanager, "a b", known)


def test_an_unreachable_alertmanager_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "moodleops.cli", "incident", "messaging", "suspend",
                          "--users-from-alert", "MoodleMassMailingByUser", "--alertmanager",
                          f"http://127.0.0.1:{port}", "--reason", "test", "--ticket", "T-1", "--journal-copy", "-"],
                         capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT)
    assert out.returncode == ExitStatus.DEPENDENCY, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Alertmanager" in lines[0] and f"127.0.0.1:{port}" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("argv", "says"), [(["--listen", "nowhere"], "--listen 'nowhere' is not valid"),
                                            (["--interval", "1"], "--interval 1.0 is not valid")])
def test_watch_serve_bad_input_is_one_line_and_status_2(argv: list[str], says: str) -> None:
    out = subprocess.run([sys.executable, "-m", "moodleops.cli", "watch", "serve", *argv], capture_output=True,
                         text=True, timeout=60, check=False, cwd=REPO_ROOT)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"moodleops: error: {out.stderr.strip().split(': error: ')[1]}"]
    assert says in out.stderr and "Traceback" not in out.stderr
