"""Inventory loading, validation, mirror check and the `moodleops inventory` CLI.

Bad-input tests copy the real inventory/ to a temp dir and break one value, so
each test proves that exactly that value is refused, with a message naming
file, key and value.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import (
    Inventory,
    InventoryError,
    MonthDay,
    check_mirror,
    is_loopback,
    load_inventory,
)

SHARED = REPO_ROOT.parent / "shared"
MIRROR = SHARED / "artifacts"
MISSING = "<missing>"   # how the loader shows a key that is absent


@pytest.fixture(autouse=True)
def _no_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads its default environment from here; tests must not depend on the caller's shell.
    monkeypatch.delenv("MOODLEOPS_INVENTORY", raising=False)
    monkeypatch.delenv("MOODLEOPS_PINS", raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A private copy of inventory/ that a test may break."""
    dest = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", dest, ignore=shutil.ignore_patterns(".secrets", "vault.yml"))
    return dest


def edit(root: Path, name: str, change: Callable[[Any], None]) -> None:
    """Apply `change` to the parsed YAML of root/name and write it back."""
    path = root / name
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def rejected(root: Path, file: str, key: str, value: object, env: str = "local") -> InventoryError:
    with pytest.raises(InventoryError) as info:
        load_inventory(env, root=root)
    err = info.value
    message = str(err)
    assert err.file.endswith(file), message
    assert err.key == key, message
    assert file in message and key in message, message
    if value == MISSING:
        assert "<missing>" in message, message
    else:
        assert err.value == value, message
        assert repr(value) in message, message
    return err


def plugin_index(data: dict[str, Any], component: str) -> int:
    return next(i for i, p in enumerate(data["plugins"]) if p["component"] == component)


# -- the real inventories ------------------------------------------------------

@pytest.mark.parametrize("env", ["local", "production"])
def test_real_inventories_load(env: str) -> None:
    inv = load_inventory(env)
    assert inv.env == env
    assert inv.root == REPO_ROOT / "inventory"
    assert inv.env_dir == REPO_ROOT / "inventory" / env
    assert len(inv.schools) == 20
    assert sum(s.students for s in inv.schools) == 3767
    assert sum(s.trainers for s in inv.schools) == 418
    assert inv.core.version == Decimal("2022112811.00")
    assert inv.core.version_text == "2022112811.00"
    assert inv.core.install_path == "."
    assert len(inv.plugins) == 14
    for group in ("web", "db_primary", "moodledata", "monitoring"):
        assert inv.group(group), group
    assert inv.vars["moodleops_env"] == env


def test_real_inventory_values() -> None:
    inv = load_inventory()
    p = inv.platform
    assert p.pool_bytes == 500_000_000_000
    assert p.rate_eur_per_student == Decimal(22)
    assert p.billing_count_due == MonthDay(7, 15)
    assert p.accounts.renewal_window == (MonthDay(6, 1), MonthDay(6, 30))
    assert (p.accounts.referents_min, p.accounts.referents_max) == (1, 3)
    millau = inv.school("ifsi_millau")
    assert millau.cohort_idnumber == millau.category_idnumber == "SCH-IFSI-MILLAU"
    assert millau.alert_bytes == p.default_school_alert_bytes == 41_000_000_000
    qp = next(pin for pin in inv.plugins if pin.component == "mod_questionnaire")
    assert (qp.version, qp.version_text) == (Decimal("2022121600.02"), "2022121600.02")
    formulas = next(pin for pin in inv.plugins if pin.component == "qtype_formulas")
    assert formulas.dependencies["qbehaviour_adaptivemultipart"] == Decimal(2014092500)
    compilatio = next(pin for pin in inv.plugins if pin.component == "plagiarism_compilatio")
    assert compilatio.secrets == ("plagiarism_compilatio/apikey",)


def test_hosts_and_raw_vars() -> None:
    local = load_inventory("local")
    assert [(h.name, h.address) for h in local.hosts] == [("localhost", "127.0.0.1")]
    assert local.hosts[0].groups == ("web", "db_primary", "moodledata", "monitoring", "loadgen")
    assert local.is_loopback_only
    # Jinja stays untouched: only Ansible can render it.
    assert str(local.vars["moodle_db_password"]).startswith("{{ lookup(")
    prod = load_inventory("production")
    assert [h.name for h in prod.group("web")] == [f"web{i}.moodle.ut.invalid" for i in (1, 2, 3)]
    assert all(h.address == h.name for h in prod.hosts)   # no ansible_host: the name is the address
    assert not prod.is_loopback_only


def test_env_as_path(root: Path) -> None:
    inv = load_inventory(str(root / "production"))
    assert (inv.env, inv.root, inv.env_dir) == ("production", root, root / "production")


def test_unknown_env_lists_available() -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory("staging")
    assert "'staging'" in str(info.value)
    assert "local, production" in str(info.value)


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("128.0.0.1", False), ("::2", False), ("web1.moodle.ut.invalid", False),
    ("localhost.example.org", False), ("", False),
])
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected


# -- schools.yml ---------------------------------------------------------------

def _school(i: int, key: str, value: object) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        data["schools"][i][key] = value
    return change


@pytest.mark.parametrize("change, key, value, allowed", [
    (_school(3, "code", "IFMS-Pamiers"), "schools[3].code", "IFMS-Pamiers", "^[a-z][a-z0-9_]{1,31}$"),
    (_school(3, "code", "1pamiers"), "schools[3].code", "1pamiers", "^[a-z]"),
    (_school(3, "code", "p" * 33), "schools[3].code", "p" * 33, "{1,31}"),
    (_school(4, "code", "ifms_pamiers"), "schools[4].code", "ifms_pamiers",
     "already used at schools[3].code"),
    (_school(2, "name", ""), "schools[2].name", "", "non-empty"),
    (_school(2, "category_idnumber", " "), "schools[2].category_idnumber", " ", "non-empty"),
    (_school(5, "category_idnumber", "SCH-IFSI-MILLAU"), "schools[5].category_idnumber", "SCH-IFSI-MILLAU",
     "already used at schools[0]"),
    # school 0's cohort defaults to its category idnumber, so this collides with it
    (_school(1, "cohort_idnumber", "SCH-IFSI-MILLAU"), "schools[1].cohort_idnumber", "SCH-IFSI-MILLAU",
     "already used at schools[0].cohort_idnumber"),
    (_school(0, "students", -1), "schools[0].students", -1, ">= 0"),
    (_school(0, "students", "many"), "schools[0].students", "many", "integer"),
    (_school(0, "students", True), "schools[0].students", True, "integer"),
    (_school(0, "trainers", -3), "schools[0].trainers", -3, ">= 0"),
    (_school(0, "referents", []), "schools[0].referents", [], "1 to 3"),
    (_school(0, "referents", [f"r{i}@example.invalid" for i in range(4)]), "schools[0].referents",
     [f"r{i}@example.invalid" for i in range(4)], "1 to 3"),
    (_school(0, "referents", ["not-an-email"]), "schools[0].referents[0]", "not-an-email", "e-mail"),
    (_school(0, "referents", ["a@b.invalid", "A@b.invalid"]), "schools[0].referents[1]", "A@b.invalid",
     "already used"),
    (_school(0, "alert_bytes", 0), "schools[0].alert_bytes", 0, "> 0"),
    (_school(0, "alert_bytes", 600_000_000_000), "schools[0].alert_bytes", 600_000_000_000,
     "threshold above the pool"),
    (_school(3, "studnets", 120), "schools[3].studnets", 120, "unknown key"),
])
def test_school_rules(root: Path, change: Callable[[Any], None], key: str, value: object,
                      allowed: str) -> None:
    edit(root, "schools.yml", change)
    err = rejected(root, "schools.yml", key, value)
    assert allowed in err.allowed


def test_school_missing_name(root: Path) -> None:
    edit(root, "schools.yml", lambda d: d["schools"][0].pop("name"))
    rejected(root, "schools.yml", "schools[0].name", MISSING)


def test_school_list_empty(root: Path) -> None:
    edit(root, "schools.yml", lambda d: d.update(schools=[]))
    rejected(root, "schools.yml", "schools", [])


def test_referent_limits_come_from_platform(root: Path) -> None:
    edit(root, "platform.yml", lambda d: d["accounts"]["referents_per_school"].update(min=2))
    err = rejected(root, "schools.yml", "schools[0].referents", ["ref-ifsi-millau@example.invalid"])
    assert "2 to 3" in err.allowed


def test_school_optional_fields(root: Path) -> None:
    def change(data: Any) -> None:
        data["schools"][0].update(cohort_idnumber="COH-MILLAU", alert_bytes=20_000_000_000,
                                  referents=["a@x.invalid", "b@x.invalid", "c@x.invalid"])
    edit(root, "schools.yml", change)
    millau = load_inventory(root=root).school("ifsi_millau")
    assert (millau.cohort_idnumber, millau.alert_bytes, len(millau.referents)) == (
        "COH-MILLAU", 20_000_000_000, 3)


# -- platform.yml --------------------------------------------------------------

def _set(*path_and_value: Any) -> Callable[[Any], None]:
    *path, value = path_and_value

    def change(data: Any) -> None:
        for part in path[:-1]:
            data = data[part]
        data[path[-1]] = value
    return change


@pytest.mark.parametrize("change, key, value, allowed", [
    (_set("agreement", "start", "2024-02-30"), "agreement.start", "2024-02-30", "real calendar date"),
    (_set("agreement", "start", "Sept 1st"), "agreement.start", "Sept 1st", "YYYY-MM-DD"),
    (_set("agreement", "end", "2024-08-31"), "agreement.end", "2024-08-31", "after agreement.start"),
    (_set("agreement", "end", "2024-09-01"), "agreement.end", "2024-09-01", "after agreement.start"),
    (_set("population", "as_of", "2025-13-01"), "population.as_of", "2025-13-01", "real calendar date"),
    (_set("storage", "pool_bytes", 0), "storage.pool_bytes", 0, ">= 1"),
    (_set("storage", "pool_bytes", "500 GB"), "storage.pool_bytes", "500 GB", "integer"),
    (_set("storage", "default_school_alert_bytes", 500_000_000_001), "storage.default_school_alert_bytes",
     500_000_000_001, "<= storage.pool_bytes"),
    (_set("storage", "pool_warning_ratio", 0), "storage.pool_warning_ratio", 0, "between 0 and 1"),
    (_set("storage", "pool_critical_ratio", 1), "storage.pool_critical_ratio", 1, "between 0 and 1"),
    (_set("storage", "pool_warning_ratio", 0.95), "storage.pool_critical_ratio", 0.90,
     "above storage.pool_warning_ratio"),
    (_set("billing", "rate_eur_per_student", 0), "billing.rate_eur_per_student", 0, "> 0"),
    (_set("billing", "rate_eur_per_student", -22), "billing.rate_eur_per_student", -22, "> 0"),
    (_set("billing", "rate_eur_per_student", "twenty"), "billing.rate_eur_per_student", "twenty", "euros"),
    (_set("billing", "count_due", "13-15"), "billing.count_due", "13-15", "MM-DD"),
    (_set("billing", "count_due", "7-15"), "billing.count_due", "7-15", "MM-DD"),
    (_set("billing", "campaign_end", "06-31"), "billing.campaign_end", "06-31", "MM-DD"),
    (_set("accounts", "hosted_expiry", "02-29"), "accounts.hosted_expiry", "02-29", "every year"),
    (_set("accounts", "renewal_window", {"start": "07-01", "end": "06-30"}), "accounts.renewal_window.end",
     "06-30", "on or after accounts.renewal_window.start"),
    (_set("accounts", "trainer_renewal_window", {"start": "06-26", "end": "06-25"}),
     "accounts.trainer_renewal_window.end", "06-25", "on or after"),
    (_set("accounts", "new_account_sla_days", 0), "accounts.new_account_sla_days", 0, ">= 1"),
    (_set("accounts", "login_pattern", "^[a-z]{3}([0-9]{4}$"), "accounts.login_pattern",
     "^[a-z]{3}([0-9]{4}$", "regular expression"),
    (_set("accounts", "referents_per_school", {"min": 1, "max": 0}), "accounts.referents_per_school.max", 0,
     ">= 1"),
    (_set("accounts", "student_types", ["student", "trainer"]), "accounts.student_types",
     ["student", "trainer"], "hosted_types"),
    (_set("school_membership", "method", "ldap"), "school_membership.method", "ldap",
     "cohort, profile_field, category_enrolments"),
])
def test_platform_rules(root: Path, change: Callable[[Any], None], key: str, value: object,
                        allowed: str) -> None:
    edit(root, "platform.yml", change)
    err = rejected(root, "platform.yml", key, value)
    assert allowed in err.allowed


def test_platform_missing_section(root: Path) -> None:
    edit(root, "platform.yml", lambda d: d.pop("storage"))
    rejected(root, "platform.yml", "storage", MISSING)


def test_profile_field_required_by_its_method(root: Path) -> None:
    def change(data: Any) -> None:
        data["school_membership"] = {"method": "profile_field"}
    edit(root, "platform.yml", change)
    rejected(root, "platform.yml", "school_membership.profile_field", MISSING)


# -- moodle.yml ----------------------------------------------------------------

def _plugin(component: str, key: str, value: object) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        data["plugins"][plugin_index(data, component)][key] = value
    return change


def _idx(component: str) -> int:
    data = yaml.safe_load((REPO_ROOT / "inventory" / "moodle.yml").read_text(encoding="utf-8"))
    return plugin_index(data, component)


CHOICEGROUP = _idx("mod_choicegroup")
DICOMVIEWER = _idx("mod_dicomviewer")
FORMULAS = _idx("qtype_formulas")
COMPILATIO = _idx("plagiarism_compilatio")


@pytest.mark.parametrize("change, key, value, allowed", [
    (_set("core", "version", "4.1.11"), "core.version", "4.1.11", "YYYYMMDDXX"),
    (_set("core", "version", "2022112811.001"), "core.version", "2022112811.001", "YYYYMMDDXX"),
    # unquoted in YAML, the float 2022112811.0 has lost the written '.00'
    (_set("core", "version", 2022112811.0), "core.version", 2022112811.0, "quoted"),
    (_set("core", "branch", 402), "core.branch", 402, "major upgrade"),
    (_set("core", "branch", "401"), "core.branch", "401", "branch number"),
    (_set("core", "sha256", "0BFD" + "0" * 60), "core.sha256", "0BFD" + "0" * 60, "bad checksum"),
    (_set("core", "url", "http://download.moodle.org/moodle-4.1.11.tgz"), "core.url",
     "http://download.moodle.org/moodle-4.1.11.tgz", "https://"),
    (_plugin("mod_choicegroup", "version", "20231109"), f"plugins[{CHOICEGROUP}].version", "20231109",
     "YYYYMMDDXX"),
    (_plugin("mod_choicegroup", "sha256", "19b66cc2"), f"plugins[{CHOICEGROUP}].sha256", "19b66cc2",
     "bad checksum"),
    (_plugin("mod_choicegroup", "file", ""), f"plugins[{CHOICEGROUP}].file", "", "file name"),
    (_plugin("mod_choicegroup", "file", "../../etc/passwd"), f"plugins[{CHOICEGROUP}].file",
     "../../etc/passwd", "without directory"),
    (_plugin("mod_dicomviewer", "file", "mod_choicegroup-1.42.1.zip"), f"plugins[{DICOMVIEWER}].file",
     "mod_choicegroup-1.42.1.zip", f"already used at plugins[{CHOICEGROUP}].file"),
    (_plugin("mod_choicegroup", "url", "ftp://example.org/x.zip"), f"plugins[{CHOICEGROUP}].url",
     "ftp://example.org/x.zip", "https://"),
    (_plugin("mod_choicegroup", "component", "choicegroup"), f"plugins[{CHOICEGROUP}].component",
     "choicegroup", "frankenstyle"),
    (_plugin("mod_choicegroup", "component", "Mod_Choicegroup"), f"plugins[{CHOICEGROUP}].component",
     "Mod_Choicegroup", "frankenstyle"),
    (_plugin("mod_choicegroup", "component", "widget_choicegroup"), f"plugins[{CHOICEGROUP}].component",
     "widget_choicegroup", "allowed types: assignsubmission, atto, auth, block"),
    (_plugin("mod_choicegroup", "install_path", "mod/choice"), f"plugins[{CHOICEGROUP}].install_path",
     "mod/choice", "mod/choicegroup"),
    (_plugin("mod_choicegroup", "install_path", "blocks/choicegroup"), f"plugins[{CHOICEGROUP}].install_path",
     "blocks/choicegroup", "mod/choicegroup"),
    (_plugin("mod_choicegroup", "requires", "2023042400"), f"plugins[{CHOICEGROUP}].requires", "2023042400",
     "plugin mod_choicegroup requires core >= 2023042400 but the pinned core is 2022112811.00"),
    (_plugin("mod_choicegroup", "requries", "2021051700"), f"plugins[{CHOICEGROUP}].requries", "2021051700",
     "unknown key"),
    (_plugin("plagiarism_compilatio", "secrets", ["apikey"]), f"plugins[{COMPILATIO}].secrets[0]", "apikey",
     "plugin/setting"),
    (_plugin("qtype_formulas", "dependencies", {"qbehaviour_adaptivemultipart": "2099010100"}),
     f"plugins[{FORMULAS}].dependencies.qbehaviour_adaptivemultipart", "2099010100",
     ("plugin qtype_formulas needs qbehaviour_adaptivemultipart >= 2099010100 but the pinned "
     "qbehaviour_adaptivemultipart is 2022092200")),
    (_plugin("qtype_formulas", "dependencies", {"qtype_multichoice": "latest"}),
     f"plugins[{FORMULAS}].dependencies.qtype_multichoice", "latest", "ANY_VERSION"),
])
def test_moodle_rules(root: Path, change: Callable[[Any], None], key: str, value: object,
                      allowed: str) -> None:
    edit(root, "moodle.yml", change)
    err = rejected(root, "moodle.yml", key, value)
    assert allowed in err.allowed


def test_pins_from_another_file_are_validated_the_same(root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """MOODLEOPS_PINS names the moodle.yml to use (an upgrade rehearsal's start point)."""
    other = tmp_path / "start.yml"
    data = yaml.safe_load((root / "moodle.yml").read_text(encoding="utf-8"))
    data["plugins"][CHOICEGROUP]["version"] = "2020010100"
    other.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("MOODLEOPS_PINS", str(other))
    assert load_inventory("local", root=root).plugins[CHOICEGROUP].version == Decimal(2020010100)
    data["plugins"][CHOICEGROUP]["version"] = "20231109"
    other.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(InventoryError) as info:
        load_inventory("local", root=root)
    assert info.value.file.endswith("start.yml") and info.value.key == f"plugins[{CHOICEGROUP}].version"
    monkeypatch.setenv("MOODLEOPS_PINS", str(tmp_path / "absent.yml"))
    with pytest.raises(InventoryError, match="absent.yml"):
        load_inventory("local", root=root)


def test_duplicate_plugin(root: Path) -> None:
    def change(data: Any) -> None:
        dup = dict(data["plugins"][CHOICEGROUP], file="other.zip")
        data["plugins"].append(dup)
    edit(root, "moodle.yml", change)
    err = rejected(root, "moodle.yml", "plugins[14].component", "mod_choicegroup")
    assert f"plugins[{CHOICEGROUP}].component" in err.allowed


@pytest.mark.parametrize("component, install_path", [
    ("mod_foo", "mod/foo"), ("block_foo", "blocks/foo"), ("qtype_foo", "question/type/foo"),
    ("qbehaviour_foo", "question/behaviour/foo"), ("format_foo", "course/format/foo"),
    ("report_foo", "report/foo"), ("plagiarism_foo", "plagiarism/foo"), ("local_foo", "local/foo"),
    ("tool_foo", "admin/tool/foo"), ("auth_foo", "auth/foo"), ("enrol_foo", "enrol/foo"),
    ("filter_foo", "filter/foo"), ("theme_foo", "theme/foo"), ("atto_foo", "lib/editor/atto/plugins/foo"),
    ("assignsubmission_foo_bar", "mod/assign/submission/foo_bar"),
])
def test_install_path_per_type(root: Path, component: str, install_path: str) -> None:
    def change(data: Any) -> None:
        data["plugins"][CHOICEGROUP].update(component=component, install_path=install_path)
    edit(root, "moodle.yml", change)
    pins = {p.component: p for p in load_inventory(root=root).plugins}
    assert pins[component].install_path == install_path


def test_pinned_dependency_new_enough_and_any_version(root: Path) -> None:
    edit(root, "moodle.yml", _plugin("qtype_formulas", "dependencies",
                                     {"qbehaviour_adaptivemultipart": "2022092200", "qtype_multichoice":
                                      "ANY_VERSION"}))
    formulas = load_inventory(root=root).plugins[FORMULAS]
    assert formulas.dependencies == {"qbehaviour_adaptivemultipart": Decimal(2022092200),
                                     "qtype_multichoice": Decimal(0)}


# -- hosts.yml -----------------------------------------------------------------

@pytest.mark.parametrize("group", ["web", "db_primary", "moodledata", "monitoring"])
def test_required_group_missing(root: Path, group: str) -> None:
    edit(root, "production/hosts.yml", lambda d: d["all"]["children"].pop(group))
    err = rejected(root, "production/hosts.yml", f"all.children.{group}.hosts", MISSING, env="production")
    assert "web, db_primary, moodledata, monitoring" in err.allowed


def test_required_group_empty(root: Path) -> None:
    edit(root, "production/hosts.yml", _set("all", "children", "monitoring", "hosts", None))
    rejected(root, "production/hosts.yml", "all.children.monitoring.hosts", None, env="production")


def test_nested_groups_and_ansible_host(root: Path) -> None:
    def change(data: Any) -> None:
        children = data["all"]["children"]
        web = children.pop("web")
        web["hosts"]["web1.moodle.ut.invalid"] = {"ansible_host": "10.0.0.11"}
        children["frontends"] = {"children": {"web": web}}
    edit(root, "production/hosts.yml", change)
    inv = load_inventory("production", root=root)
    web1 = next(h for h in inv.hosts if h.name == "web1.moodle.ut.invalid")
    assert web1.address == "10.0.0.11"
    assert web1.groups == ("frontends", "web")
    assert len(inv.group("web")) == len(inv.group("frontends")) == 3


def test_conflicting_ansible_host(root: Path) -> None:
    def change(data: Any) -> None:
        data["all"]["hosts"]["localhost"]["ansible_host"] = "127.0.0.1"
        data["all"]["children"]["web"]["hosts"]["localhost"] = {"ansible_host": "10.1.2.3"}
    edit(root, "local/hosts.yml", change)
    rejected(root, "local/hosts.yml", "all.children.web.hosts.localhost.ansible_host", "10.1.2.3")


def test_ssh_port_and_connection_of_a_host(root: Path) -> None:
    def change(data: Any) -> None:
        data["all"]["hosts"]["localhost"].update({"ansible_connection": "ssh", "ansible_port": 2222})
    edit(root, "local/hosts.yml", change)
    host = load_inventory("local", root=root).hosts[0]
    assert (host.connection, host.port, host.ssh_address) == ("ssh", 2222, "127.0.0.1:2222")
    assert load_inventory("production", root=root).hosts[0].ssh_address.endswith(":22")


def test_ssh_port_out_of_range(root: Path) -> None:
    edit(root, "local/hosts.yml", _set("all", "hosts", "localhost", "ansible_port", 70000))
    rejected(root, "local/hosts.yml", "all.hosts.localhost.ansible_port", 70000)


def test_unknown_group_key(root: Path) -> None:
    edit(root, "production/hosts.yml", _set("all", "children", "web", "host", {"web9": None}))
    rejected(root, "production/hosts.yml", "all.children.web.host", {"web9": None}, env="production")


# -- YAML itself ---------------------------------------------------------------

def test_yaml_syntax_error_names_file_and_line(root: Path) -> None:
    path = root / "schools.yml"
    lines = path.read_text(encoding="utf-8").splitlines()
    n = next(i for i, line in enumerate(lines) if "ifms_pamiers" in line)
    lines[n] = lines[n].replace("}", "", 1)   # an unclosed flow mapping
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InventoryError) as info:
        load_inventory(root=root)
    message = str(info.value)
    assert info.value.file.endswith("schools.yml")
    assert info.value.key.startswith("line ")
    assert "YAML syntax error" in message


def test_duplicate_yaml_key_is_an_error(root: Path) -> None:
    path = root / "platform.yml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("  pool_bytes:", "  pool_bytes: 1\n  pool_bytes:", 1), encoding="utf-8")
    with pytest.raises(InventoryError) as info:
        load_inventory(root=root)
    line = 1 + next(i for i, t in enumerate(path.read_text().splitlines()) if "pool_bytes: 1" in t) + 1
    assert info.value.key == f"line {line}"
    assert "duplicate key 'pool_bytes'" in str(info.value)


def test_empty_file(root: Path) -> None:
    (root / "schools.yml").write_text("# nothing yet\n", encoding="utf-8")
    rejected(root, "schools.yml", "<document>", None)


def test_ansible_tags_in_group_vars_stay_raw(root: Path) -> None:
    with (root / "production" / "group_vars" / "all.yml").open("a", encoding="utf-8") as f:
        f.write("inline_secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n")
    inv = load_inventory("production", root=root)
    assert str(inv.vars["inline_secret"]).startswith("$ANSIBLE_VAULT;1.1;AES256")


def test_missing_shared_file(root: Path) -> None:
    (root / "moodle.yml").unlink()
    rejected(root, "moodle.yml", "<file>", "missing")


# -- the artifact mirror -------------------------------------------------------

@pytest.fixture
def real_inventory() -> Inventory:
    return load_inventory()


def test_real_mirror_matches_pins(real_inventory: Inventory) -> None:
    # Not a skip: without the shared mirror the pins are unverified, which is a failure.
    assert MIRROR.is_dir(), f"shared artifact mirror not found at {MIRROR}"
    problems = [line for line in check_mirror(real_inventory, MIRROR) if not line.startswith("note:")]
    assert problems == []


@pytest.fixture
def temp_mirror(tmp_path: Path, real_inventory: Inventory) -> Path:
    """The real mirror, symlinked file by file, with one archive gone and one corrupted."""
    assert MIRROR.is_dir(), f"shared artifact mirror not found at {MIRROR}"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for pin in (real_inventory.core, *real_inventory.plugins):
        (mirror / pin.file).symlink_to(MIRROR / pin.file)
    (mirror / "mod_hotpot-2025050353.zip").unlink()
    (mirror / "format_grid-401.2.6.zip").unlink()
    (mirror / "format_grid-401.2.6.zip").write_bytes(b"not the pinned archive")
    manifest = json.loads((MIRROR / "MANIFEST.json").read_text(encoding="utf-8"))
    manifest.append({"component": "mod_extra", "file": "mod_extra-1.0.zip", "sha256": "0" * 64})
    (mirror / "MANIFEST.json").write_text(json.dumps(manifest), encoding="utf-8")
    return mirror


def test_mirror_reports_missing_and_wrong_sha(real_inventory: Inventory, temp_mirror: Path) -> None:
    lines = check_mirror(real_inventory, temp_mirror)
    corrupted = hashlib.sha256(b"not the pinned archive").hexdigest()
    assert [line for line in lines if not line.startswith("note:")] == [
        f"mod_hotpot: mod_hotpot-2025050353.zip is not in the mirror {temp_mirror}",
        (f"format_grid: format_grid-401.2.6.zip has sha256 {corrupted}, the inventory pins "
        "65235719c0e5d33129592c14f1502c4f971c2a64f4590f4e833b1a572f2376eb"),
    ]
    assert [line for line in lines if line.startswith("note:")] == [
        ("note: mod_extra: mod_extra-1.0.zip is in the mirror's MANIFEST.json "
        "but the inventory does not pin it")]


def test_mirror_not_a_directory(real_inventory: Inventory, tmp_path: Path) -> None:
    assert check_mirror(real_inventory, tmp_path / "nowhere") == [
        f"the mirror {tmp_path / 'nowhere'} is not a directory"]


# -- CLI -----------------------------------------------------------------------

def test_cli_check_local(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "check"]) == 0
    out = capsys.readouterr().out
    assert "inventory local" in out
    assert "20 (3767 students, 418 trainers)" in out
    assert "2022112811.00" in out
    assert "plugins:  14" in out
    assert "loopback only" in out


def test_cli_check_production_with_real_mirror(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inventory", "production", "inventory", "check", "--mirror", str(MIRROR)]) == 0
    captured = capsys.readouterr()
    assert "inventory production" in captured.out
    assert "15 archives match their pins" in captured.out
    assert captured.err == ""


def test_cli_check_mirror_problems_exit_1(temp_mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "check", "--mirror", str(temp_mirror)]) == 1
    captured = capsys.readouterr()
    assert "mod_hotpot-2025050353.zip is not in the mirror" in captured.err
    assert "note: mod_extra" in captured.out
    assert "2 problem(s)" in captured.out


def test_cli_invalid_inventory_one_line_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(root, "schools.yml", _school(3, "code", "IFMS Pamiers"))
    assert main(["--inventory", str(root / "local"), "inventory", "check"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("moodleops: error: ")
    assert "schools.yml" in lines[0] and "schools[3].code" in lines[0] and "'IFMS Pamiers'" in lines[0]


def test_cli_unknown_env(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inventory", "staging", "inventory", "show"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moodleops: error: ")
    assert "local, production" in err


def test_cli_env_default_from_environment(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MOODLEOPS_INVENTORY", "production")
    assert main(["inventory", "check"]) == 0
    assert "inventory production" in capsys.readouterr().out


def test_cli_show_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["code", "name", "idnumber", "students", "trainers", "alert", "GB"]
    millau = next(line for line in lines if line.startswith("ifsi_millau "))
    assert millau.split()[-4:] == ["SCH-IFSI-MILLAU", "160", "18", "41"]
    assert lines[-1].split()[-2:] == ["3767", "418"]


def test_cli_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inventory", "show", "--format", "json"]) == 0
    schools = json.loads(capsys.readouterr().out)
    assert len(schools) == 20
    assert schools[0] == {"code": "ifsi_millau", "name": "IFSI Millau",
                          "category_idnumber": "SCH-IFSI-MILLAU", "cohort_idnumber": "SCH-IFSI-MILLAU",
                          "students": 160, "trainers": 18, "alert_bytes": 41_000_000_000, "alert_gb": 41.0}


@pytest.mark.parametrize("argv", [["--help"], ["inventory", "--help"], ["inventory", "check", "--help"],
                                  ["inventory", "show", "--help"]])
def test_cli_help_reads_like_a_man_page(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: moodleops")
    assert "examples:" in out


@pytest.mark.parametrize("argv", [[], ["inventory"], ["inventory", "frobnicate"], ["nosucharea", "x"],
                                  ["inventory", "show", "--format", "xml"]])
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: moodleops" in capsys.readouterr().err


def test_cli_does_not_swallow_unknown_errors(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A bug is not dressed up as an operator's error: its own status (70), its
    # type and message on one line, and the traceback with --debug.
    def boom(*args: object, **kwargs: object) -> Inventory:
        raise RuntimeError("a bug, not an inventory problem")

    monkeypatch.setattr("moodleops.inventory.cli.validate", boom)
    assert main(["inventory", "check"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: a bug" in err and "--debug" in err
    assert main(["--debug", "inventory", "check"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("moodleops: internal error:")
