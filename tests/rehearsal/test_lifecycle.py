"""`moodleops rehearsal up | status | down` against real LXC containers: every
host reached over SSH by Ansible as production reaches its hosts, faults named
by host with what to do, and `down` leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import load_inventory
from moodleops.rehearsal import lxc
from moodleops.rehearsal.spec import Rehearsal, load_rehearsal

MOODLEOPS = [sys.executable, "-m", "moodleops.cli"]
SPEC: Rehearsal = load_rehearsal(load_inventory("rehearsal"))


def moodleops(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOODLEOPS, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, check=False, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moodleops: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[subprocess.CompletedProcess[str]]:
    if lxc.missing_tools():
        pytest.fail("lxc is not installed: ./ops test installs it (apt-get install lxc debootstrap)")
    proc = moodleops("rehearsal", "up")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield proc
    finally:
        # Never leave containers running, whatever failed above.
        moodleops("rehearsal", "down")


def ansible(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("ansible")), "-i",
                           str(REPO_ROOT / "inventory" / "rehearsal" / "hosts.yml"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False,
                          env={**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg")})


def test_every_host_is_reached_by_ansible_over_ssh(rehearsal: subprocess.CompletedProcess[str]) -> None:
    status = moodleops("rehearsal", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{len(SPEC.hosts)}/{len(SPEC.hosts)} hosts up and reachable over SSH" in status.stdout
    # Ansible with the rehearsal inventory as is: SSH as moodleops, become root, each
    # host answering with its own inventory name and address.
    proc = ansible("all", "-b", "-o", "-m", "ansible.builtin.shell",
                   "-a", "echo $(hostname) $(id -un) $(ip -4 -o addr show dev eth0 | awk '{print $4}')")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = {line.split(" | ")[0]: line.rsplit("(stdout) ", 1)[-1].strip() for line in proc.stdout.splitlines()}
    assert seen == {h.name: f"{h.name} root {h.address}/{SPEC.prefix_len}" for h in SPEC.hosts}
    # The connection really is SSH with the rehearsal's pinned host keys.
    known = (SPEC.state_dir / "ssh" / "known_hosts").read_text(encoding="utf-8")
    assert all(f"{h.address},{h.name} ssh-ed25519 " in known for h in SPEC.hosts)


def test_hosts_are_overlay_snapshots_of_one_base(rehearsal: subprocess.CompletedProcess[str]) -> None:
    base_rootfs = lxc.LXC_PATH / SPEC.base_container / "rootfs"
    for host in SPEC.hosts:
        config = lxc.config_path(host.container).read_text(encoding="utf-8")
        assert f"lxc.rootfs.path = overlay:{base_rootfs}:" in config, host.name
    # Each host has the whole stack from the base, nothing downloaded per host.
    proc = ansible("all", "-o", "-m", "ansible.builtin.command", "-a",
                   "dpkg-query -W -f=${Status} postgresql-15 nginx php8.2-fpm haproxy sshfs prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_second_up_reuses_everything(rehearsal: subprocess.CompletedProcess[str]) -> None:
    before = {h.container: (lxc.LXC_PATH / h.container).stat().st_ino for h in SPEC.hosts}
    again = moodleops("rehearsal", "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cloned" not in again.stdout and "base: creating" not in again.stdout
    assert {h.container: (lxc.LXC_PATH / h.container).stat().st_ino for h in SPEC.hosts} == before


def test_refused_key_names_the_host_and_up_repairs_it(rehearsal: subprocess.CompletedProcess[str]) -> None:
    web2 = SPEC.host("web2")
    lxc.attach(web2.container, ": > /home/moodleops/.ssh/authorized_keys\n", "removing the key")
    status = moodleops("rehearsal", "status")
    assert status.returncode == 1
    line = next(li for li in status.stdout.splitlines() if li.startswith("web2 "))
    assert f"SSH key refused for moodleops@{web2.address}" in line
    assert all(" ok " in li for li in status.stdout.splitlines()[:-1] if not li.startswith("web2 "))
    repaired = moodleops("rehearsal", "up")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert moodleops("rehearsal", "status").returncode == 0


def test_host_that_does_not_boot_is_named(rehearsal: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    # The same rehearsal with a short boot timeout (a copy of the inventory).
    root = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", root, ignore=shutil.ignore_patterns("vault.yml"))
    settings = root / "rehearsal" / "rehearsal.yml"
    data = yaml.safe_load(settings.read_text(encoding="utf-8"))
    data["boot_timeout_seconds"] = 8
    settings.write_text(yaml.safe_dump(data), encoding="utf-8")
    gen2 = SPEC.host("gen2")
    config = lxc.config_path(gen2.container)
    good = config.read_text(encoding="utf-8")
    lxc.stop(gen2.container)
    try:
        config.write_text(good + "lxc.init.cmd = /bin/false\n", encoding="utf-8")
        proc = moodleops("-i", str(root / "rehearsal"), "rehearsal", "up")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_error_line(proc)
        assert "gen2" in line and "rehearsal down" in line, line
    finally:
        lxc.stop(gen2.container)
        config.write_text(good, encoding="utf-8")
    assert moodleops("rehearsal", "up").returncode == 0


def test_missing_lxc_is_one_line(rehearsal: subprocess.CompletedProcess[str]) -> None:
    for command in ("up", "status", "down"):
        proc = moodleops("rehearsal", command, env={"PATH": "/nonexistent"})
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        assert "apt-get install lxc debootstrap" in one_error_line(proc)
    # Nothing was touched: the rehearsal is still whole.
    assert moodleops("rehearsal", "status").returncode == 0


def test_down_removes_every_container_and_the_network(rehearsal: subprocess.CompletedProcess[str]) -> None:
    state = json.loads((SPEC.state_dir / "state.json").read_text(encoding="utf-8"))
    ours_network = state["network_started"]
    proc = moodleops("rehearsal", "down")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [n for n in lxc.names() if n.startswith(SPEC.name_prefix)]
    assert left == [SPEC.base_container]      # the cache, stopped
    assert lxc.state(SPEC.base_container) == "STOPPED"
    bridge = subprocess.run(["ip", "link", "show", SPEC.bridge], capture_output=True, check=False)
    assert (bridge.returncode != 0) == ours_network
    assert json.loads((SPEC.state_dir / "state.json").read_text(encoding="utf-8"))["containers"] == {}
    again = moodleops("rehearsal", "down")
    assert again.returncode == 0 and "removed" not in again.stdout
