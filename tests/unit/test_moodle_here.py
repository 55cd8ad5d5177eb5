"""Moodle's CLI acts on the Moodle installed on this machine: a command given
another environment's inventory (the rehearsal, production from an operator's
laptop) must refuse before anything, never act on the local site instead."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.inventory.addresses import is_this_machine
from moodleops.site import site_of


def test_this_machine_is_recognised_by_connection_loopback_name_or_address() -> None:
    assert is_this_machine("web9", "10.0.3.250", "local")
    assert is_this_machine("web9", "127.0.0.2")
    assert is_this_machine("web9", "::1")
    assert is_this_machine(socket.gethostname(), "192.0.2.1")
    # TEST-NET addresses are no interface of this machine, and never routed.
    assert not is_this_machine("web9", "192.0.2.1")
    assert not is_this_machine("web9", "203.0.113.7", "ssh")
    assert not is_this_machine("web9", "name.invalid")


def test_only_the_local_inventory_has_its_moodle_here() -> None:
    local = site_of(load_inventory("local"))
    assert local.moodle_here
    local.require_here()
    for env in ("rehearsal", "production"):
        site = site_of(load_inventory(env))
        assert not site.moodle_here and site.web_nodes, env


@pytest.mark.parametrize("argv", [
    ["incident", "suspend", "--school", "ifsi_millau", "--reason", "drill", "--ticket", "T-1", "--apply",
     "--journal-copy", "-"],
    ["incident", "recover", "--apply"],
    ["platform", "maintenance", "on"],
    ["backup", "export", "--export-id", "x1", "--school", "ifsi_millau"],
])
def test_a_command_for_another_sites_moodle_refuses_with_one_line(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["-i", "rehearsal", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and "Moodle is not on this machine (its web nodes: web1, web2)" in err[0], err


def test_a_restore_onto_another_sites_moodle_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["-i", "local", "backup", "restore", "--manifest", "latest", "--target-inventory", "rehearsal",
               "--confirm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--target-inventory rehearsal: its Moodle is not on this machine" in err[0], err


@pytest.mark.parametrize("env, runner", [("rehearsal", "manual"), ("production", "systemd")])
def test_a_backup_for_another_sites_moodle_goes_to_its_job_host(env: str, runner: str) -> None:
    from moodleops.backup.job_host import job_host
    from moodleops.platform.ansible_view import role_vars

    inv = load_inventory(env)
    jh = job_host(inv)
    # The first web node, through the launcher with the jobs' environment, reading the
    # toolkit's copy of the inventory there (not this checkout's path).
    assert jh.host == inv.group("web")[0] and jh.host.name.startswith("web1")
    assert jh.launcher == "/usr/local/lib/moodleops/backup-jobs"
    assert jh.inventory == f"/opt/moodleops/inventory/{env}"
    v = role_vars(inv, "backup_schedule", "web", ("backup_schedule_runner", "backup_schedule_moodleops"))
    assert v == {"backup_schedule_runner": runner, "backup_schedule_moodleops": "/usr/local/sbin/moodleops"}


def test_a_backup_whose_job_host_has_nothing_installed_refuses(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path
    for f in (REPO_ROOT / "inventory").glob("*.yml"):
        shutil.copy(f, root / f.name)
    shutil.copytree(REPO_ROOT / "inventory/rehearsal", root / "rehearsal")
    gv = root / "rehearsal/group_vars/all.yml"
    data = yaml.safe_load(gv.read_text())
    data["backup_schedule_runner"] = "none"
    gv.write_text(yaml.safe_dump(data))
    rc = main(["-i", str(root / "rehearsal"), "backup", "run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "backup_schedule_runner is none, so nothing is installed on the job host web1" in err[-1], err


def test_measurements_read_the_replica_and_an_incident_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    from moodleops import moodledb

    monkeypatch.setenv("MOODLEOPS_DB_RO_PASSWORD", "x")
    rehearsal = site_of(load_inventory("rehearsal"))
    assert (moodledb.target_of(rehearsal).host, moodledb.target_of(rehearsal, primary=True).host) == \
        ("10.0.3.214", "10.0.3.213")
    local = site_of(load_inventory("local"))
    # No replica: the read host is the database host.
    assert moodledb.target_of(local).host == moodledb.target_of(local, primary=True).host == local.db_host


def test_the_storage_exporter_on_a_host_without_moodle_uses_the_default_paths() -> None:
    from moodleops.exporters.storage_config import ask_paths, moodle_paths

    site = site_of(load_inventory("rehearsal"))
    got, notes = ask_paths(site)   # no Moodle CLI spawned: it would refuse (NotOnThisMachine)
    assert got is None and len(notes) == 1 and "Moodle is not on this host (its web nodes: web1, web2)" in notes[0]
    paths, _ = moodle_paths(site)
    assert paths.filedir == site.dataroot / "filedir"
