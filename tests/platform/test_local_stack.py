"""The single-node platform provisioned by playbooks/site.yml, checked from the
outside (HTTP, as a person would) and through Moodle itself."""

from __future__ import annotations

import os
import shutil
import stat
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import Inventory, load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.platform.ansible import run_playbook
from moodleops.site import Site
from moodleops.webclient import LoginFailed, login

pytestmark = pytest.mark.stack


def test_admin_logs_in_over_http_with_the_login_token(site: Site) -> None:
    session = login(site.wwwroot, "admin", site.secret("admin_password"))
    assert session.is_logged_in()
    with pytest.raises(LoginFailed, match="Invalid login"):
        login(site.wwwroot, "admin", site.secret("admin_password") + "x")


def test_every_pinned_plugin_is_installed_at_its_pin_as_moodle_records_it(
        local_inventory: Inventory, moodle: MoodleCLI) -> None:
    probe = moodle.probe()
    assert probe["installed"] and not probe["needs_upgrade"]
    assert Decimal(probe["version"]) == local_inventory.core.version
    installed = probe["plugins"]
    wrong = {p.component: (installed.get(p.component) or {}).get("db") for p in local_inventory.plugins
             if (installed.get(p.component) or {}).get("db") is None
             or Decimal(installed[p.component]["db"]) != p.version}
    assert wrong == {}
    assert len(local_inventory.plugins) == 14


def _changed_tasks(output: list[str]) -> list[str]:
    task, changed = "", []
    for line in output:
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ")
        elif line.startswith("changed:"):
            changed.append(f"{task}: {line}")
    return changed


def test_second_run_and_check_mode_change_nothing(local_inventory: Inventory, site: Site) -> None:
    again = run_playbook(local_inventory, "site.yml", echo=False)
    assert again.ok, "\n".join(again.output[-30:])
    assert again.total_changed == 0, _changed_tasks(again.output)
    dry = run_playbook(local_inventory, "site.yml", ["--check", "--diff"], echo=False)
    assert dry.ok and dry.total_changed == 0, _changed_tasks(dry.output)


@pytest.mark.parametrize("path", [
    "/dataroot/filedir/warning.txt", "/moodledata/filedir/warning.txt", "/../moodledata/filedir/warning.txt",
    "/filedir/warning.txt", "/.moodleops-release.json", "/admin/environment.xml", "/composer.json",
])
def test_moodledata_and_internal_files_are_not_served(site: Site, path: str) -> None:
    assert (site.dataroot / "filedir" / "warning.txt").exists()
    resp = requests.get(site.wwwroot + path, timeout=30, allow_redirects=False)
    assert resp.status_code in (403, 404), (path, resp.status_code)
    assert "filedir" not in resp.text.lower() or resp.status_code == 404


def test_config_php_is_not_readable_over_http_and_is_protected_on_disk(site: Site) -> None:
    resp = requests.get(site.wwwroot + "/config.php", timeout=30)
    assert site.secret("db_password") not in resp.text
    mode = (site.current_link / "config.php").stat()
    assert stat.S_IMODE(mode.st_mode) == 0o640


def test_moodledata_belongs_to_the_web_user_only(site: Site) -> None:
    st = site.dataroot.stat()
    import pwd
    assert pwd.getpwuid(st.st_uid).pw_name == site.web_user
    assert stat.S_IMODE(st.st_mode) & 0o007 == 0


def test_every_school_has_its_category_and_cohort(local_inventory: Inventory, site: Site) -> None:
    with psycopg.connect(host=site.db_host, port=site.db_port, dbname=site.db_name, user=site.db_ro_user,
                         password=site.secret("db_ro_password")) as conn:
        cats = {r[0] for r in conn.execute(
            f"SELECT idnumber FROM {site.db_prefix}course_categories WHERE parent = 0")}
        cohorts = {r[0] for r in conn.execute(f"SELECT idnumber FROM {site.db_prefix}cohort")}
    for school in local_inventory.schools:
        assert school.category_idnumber in cats
        assert school.cohort_idnumber in cohorts


def test_read_only_role_cannot_write(site: Site) -> None:
    with psycopg.connect(host=site.db_host, port=site.db_port, dbname=site.db_name, user=site.db_ro_user,
                         password=site.secret("db_ro_password")) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"UPDATE {site.db_prefix}config SET value = value WHERE name = 'version'")


def test_cron_runs_under_supervision(site: Site) -> None:
    import subprocess
    out = subprocess.run(["supervisorctl", "status", "moodle-cron"], capture_output=True, text=True, check=False)
    assert "RUNNING" in out.stdout


def test_status_command_reports_healthy(local_inventory: Inventory, site: Site,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inventory", "local", "platform", "status"]) == 0
    out = capsys.readouterr().out
    assert "14/14 at their pinned version" in out
    assert "login as admin OK" in out
    assert "mod_wooclap" in out and "unconfigured: no API key" in out


def test_changed_pins_on_an_installed_site_are_refused_and_nothing_changes(
        local_inventory: Inventory, site: Site, tmp_path: Path) -> None:
    root = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns("production", "vault.yml"))
    pins = yaml.safe_load((root / "moodle.yml").read_text())
    older = REPO_ROOT.parent / "shared/artifacts/older"
    mirror = tmp_path / "mirror"
    shutil.copytree(REPO_ROOT.parent / "shared/artifacts", mirror, ignore=shutil.ignore_patterns("older"))
    shutil.copy(older / "format_onetopic-4.1.10.zip", mirror)
    for pin in pins["plugins"]:
        if pin["component"] == "format_onetopic":
            pin.update(version="2022081610", file="format_onetopic-4.1.10.zip",
                       sha256="e89d370705a76aa1b9d82a3a5a431d1562c06f2b172cfbd3bd0be4fe7fec0876")
    (root / "moodle.yml").write_text(yaml.safe_dump(pins))
    edited = load_inventory(str(root / "local"))
    before = os.readlink(site.current_link)
    releases_before = sorted(Path(before).parent.iterdir())
    result = run_playbook(edited, "site.yml", ["--tags", "moodle"], echo=False,
                          env={"MOODLEOPS_ARTIFACTS": str(mirror)})
    assert not result.ok
    assert any("Apply new pins with the upgrade play" in ln for ln in result.output)
    assert os.readlink(site.current_link) == before
    assert sorted(Path(before).parent.iterdir()) == releases_before    # refused before building anything
    assert login(site.wwwroot, "admin", site.secret("admin_password")).is_logged_in()
