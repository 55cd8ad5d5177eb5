"""The rehearsal's settings and host addresses are refused, file, key and value
named, when they would make it target anything but its own containers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import InventoryError, load_inventory
from moodleops.rehearsal.spec import load_rehearsal


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", dest, ignore=shutil.ignore_patterns("vault.yml"))
    return dest


def edit(root: Path, name: str, change: Callable[[Any], None]) -> None:
    path = root / "rehearsal" / name
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def refused(root: Path, key: str, value: object) -> str:
    with pytest.raises(InventoryError) as info:
        load_rehearsal(load_inventory("rehearsal", root=root))
    assert info.value.key == key and info.value.value == value, str(info.value)
    return str(info.value)


def test_real_rehearsal() -> None:
    spec_inv = load_inventory("rehearsal")
    spec = load_rehearsal(spec_inv)
    assert [h.name for h in spec.hosts] == ["lb1", "web1", "web2", "db1", "db2", "data1", "mon1", "gen1", "gen2"]
    assert all(h.container == "moodleops-rh-" + h.name for h in spec.hosts)
    assert spec.base_container == "moodleops-rh-base-bookworm"
    assert len(spec.base_key) == 16
    # The backups' S3 (moto in the tests) is the operator's side of the bridge, nothing else.
    assert urlsplit(str(spec_inv.vars["backup_s3_endpoint_url"])).hostname == spec.gateway


def _host(name: str, address: str) -> Callable[[Any], None]:
    def change(d: Any) -> None:
        for group in d["all"]["children"].values():
            if name in (group.get("hosts") or {}):
                group["hosts"][name] = {"ansible_host": address}
    return change


@pytest.mark.parametrize("address", ["192.168.1.10", "127.0.0.1", "10.0.3.255", "10.0.3.0", "web1.example"])
def test_address_outside_the_network(root: Path, address: str) -> None:
    edit(root, "hosts.yml", _host("web2", address))
    assert "rehearsal network 10.0.3.0/24" in refused(root, "web2.ansible_host", address)


def test_gateway_and_duplicate_addresses(root: Path) -> None:
    edit(root, "hosts.yml", _host("web2", "10.0.3.1"))
    assert "the gateway" in refused(root, "web2.ansible_host", "10.0.3.1")
    edit(root, "hosts.yml", _host("web2", "10.0.3.211"))
    assert "web1" in refused(root, "web2.ansible_host", "10.0.3.211")


@pytest.mark.parametrize("key, value", [
    ("network", "8.8.8.0/24"), ("network", "10.0.3.0/30"), ("gateway", "10.0.4.1"),
    ("state_dir", "relative/dir"), ("boot_timeout_seconds", 0), ("bogus", 1),
])
def test_settings_refused(root: Path, key: str, value: object) -> None:
    edit(root, "rehearsal.yml", lambda d: d.__setitem__(key, value))
    refused(root, key, value)


def test_state_dir_must_match_group_vars(root: Path) -> None:
    edit(root, "rehearsal.yml", lambda d: d.__setitem__("state_dir", "/var/lib/elsewhere"))
    assert "moodleops_rehearsal_dir" in refused(root, "state_dir", "/var/lib/elsewhere")


def test_base_key_follows_packages(root: Path) -> None:
    before = load_rehearsal(load_inventory("rehearsal", root=root)).base_key
    edit(root, "rehearsal.yml", lambda d: d["base_packages"].append("htop"))
    assert load_rehearsal(load_inventory("rehearsal", root=root)).base_key != before
