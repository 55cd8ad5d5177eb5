"""The health check's login trusts moodle_ca_bundle when the inventory names
one (the rehearsal: lb1's self-signed certificate, fetched by the haproxy
role); a missing file is one problem line, and no request is made."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import load_inventory
from moodleops.platform.health import Health, _check_login, _remote_probe, check_health
from moodleops.site import site_of
from tests.prom_loopback import free_port


def _inventory_with_ca(tmp_path: Path, ca: Path) -> Path:
    root = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns("production", "rehearsal"))
    gv = root / "local" / "group_vars" / "all.yml"
    data = yaml.safe_load(gv.read_text(encoding="utf-8"))
    # A closed loopback port: were a request made, it would fail differently.
    data.update({"moodle_ca_bundle": str(ca), "moodle_wwwroot": "https://127.0.0.1:9"})
    gv.write_text(yaml.safe_dump(data), encoding="utf-8")
    return root / "local"


def test_a_missing_ca_bundle_is_one_problem_naming_it(tmp_path: Path) -> None:
    ca = tmp_path / "tls" / "lb1.crt"
    inv = load_inventory(str(_inventory_with_ca(tmp_path, ca)))
    assert inv.settings.ca_bundle == ca
    h = Health()
    _check_login(inv, site_of(inv), h)
    wanted = (f"HTTP login failed: moodle_ca_bundle {ca} does not exist (a self-signed certificate is "
              "fetched there by `platform up`)")
    # (The local monitoring's own lines follow when the local stack is down.)
    assert [p for p in h.problems if p.startswith("HTTP login")] == [wanted]


def test_unset_it_is_none_and_the_system_cas_are_used() -> None:
    assert load_inventory("production").settings.ca_bundle is None


def _unreachable_web_node(tmp_path: Path) -> tuple[Path, int]:
    env = _inventory_with_ca(tmp_path, tmp_path / "unused.crt")
    port = free_port()      # nothing listens there: ssh is refused, on loopback
    (env / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "web": {"hosts": {"web1": {"ansible_host": "127.0.0.1", "ansible_port": port,
                                   "ansible_connection": "ssh", "ansible_user": "moodleops"}}},
        **{group: {"hosts": {"web1": None}} for group in ("db_primary", "moodledata", "monitoring")}}}}),
        encoding="utf-8")
    return env, port


def test_versions_unreadable_over_ssh_are_one_problem_naming_the_node(tmp_path: Path) -> None:
    env, port = _unreachable_web_node(tmp_path)
    inv = load_inventory(str(env))
    h = Health()
    assert _remote_probe(inv, h) is None
    assert len(h.problems) == 1, h.problems
    assert h.problems[0].startswith(f"versions not read on web1 over SSH: SSH 127.0.0.1:{port}: "
                                    "connection refused (check that sshd runs"), h.problems


def test_a_node_unreachable_over_ssh_still_gets_the_login_verdict(tmp_path: Path) -> None:
    env, _port = _unreachable_web_node(tmp_path)
    (tmp_path / "unused.crt").write_text("not a certificate\n", encoding="utf-8")
    inv = load_inventory(str(env))
    site = site_of(inv)
    site.__dict__["moodle_here"] = False     # as on an operator's machine (the node is on loopback here)
    h = check_health(inv, site)
    # (The local monitoring's own lines follow when the local stack is down.)
    assert [p.split(":")[0] for p in h.problems][:2] == ["versions not read on web1 over SSH", "HTTP login failed"]
