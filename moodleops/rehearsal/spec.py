"""What the rehearsal builds, read and validated once from the inventory:
the hosts of inventory/<env>/hosts.yml and the engine settings of
inventory/<env>/rehearsal.yml."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from moodleops.inventory import Inventory
from moodleops.inventory._reader import Node, display_path, load_yaml

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_RELEASE = re.compile(r"^[a-z]+$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
_KEYS = ("bridge", "network", "gateway", "release", "state_dir", "name_prefix", "base_packages",
         "boot_timeout_seconds")


@dataclass(frozen=True)
class RehearsalHost:
    name: str          # inventory name (web1): also the container's hostname
    container: str     # LXC container name (moodleops-rh-web1)
    address: str       # static IPv4 on the bridge
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Rehearsal:
    env: str
    bridge: str
    network: ipaddress.IPv4Network
    gateway: str
    release: str
    state_dir: Path
    name_prefix: str
    base_packages: tuple[str, ...]
    boot_timeout: int
    hosts: tuple[RehearsalHost, ...]

    @property
    def base_container(self) -> str:
        return f"{self.name_prefix}base-{self.release}"

    @property
    def base_key(self) -> str:
        """Identifies the base's content: a change of release or packages rebuilds it."""
        doc = json.dumps({"release": self.release, "packages": sorted(self.base_packages), "recipe": 1})
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    @property
    def prefix_len(self) -> int:
        return self.network.prefixlen

    def host(self, name: str) -> RehearsalHost:
        return next(h for h in self.hosts if h.name == name)


def load_rehearsal(inv: Inventory) -> Rehearsal:
    """The rehearsal of `inv`; InventoryError (file, key, value) when it has none or it is invalid."""
    path = inv.env_dir / "rehearsal.yml"
    node = Node(display_path(path), "", load_yaml(path))
    node.mapping(_KEYS)
    network = _network(node.get("network"))
    gateway_node = node.get("gateway")
    gateway = _address_in(gateway_node, network)
    state_node = node.get("state_dir")
    state_dir = Path(state_node.text())
    if not state_dir.is_absolute():
        state_node.fail("an absolute path")
    prefix = node.get("name_prefix").text(re.compile(r"^[a-z][a-z0-9-]{0,20}$"), "lower-case letters, digits, -")
    packages = tuple(p.text(_PACKAGE, "a Debian package name") for p in node.get("base_packages").seq(1))
    rehearsal_vars_dir = inv.vars.get("moodleops_rehearsal_dir")
    if rehearsal_vars_dir is not None and str(rehearsal_vars_dir) != str(state_dir):
        state_node.fail(f"the same directory as moodleops_rehearsal_dir in group_vars ({rehearsal_vars_dir})")

    hosts: list[RehearsalHost] = []
    seen = {gateway: "the gateway"}
    hosts_file = display_path(inv.env_dir / "hosts.yml")
    for host in inv.hosts:
        where = Node(hosts_file, f"{host.name}.ansible_host", host.address)
        if not _NAME.match(host.name):
            Node(hosts_file, host.name, host.name).fail("a host name of lower-case letters, digits and -")
        address = _address_in(where, network)
        if address in seen:
            where.fail(f"an address of its own (already {seen[address]})")
        seen[address] = host.name
        hosts.append(RehearsalHost(name=host.name, container=prefix + host.name, address=address,
                                   groups=host.groups))
    return Rehearsal(
        env=inv.env,
        bridge=node.get("bridge").text(re.compile(r"^[a-z][a-z0-9]{0,14}$"), "a bridge name"),
        network=network, gateway=gateway,
        release=node.get("release").text(_RELEASE, "a Debian release name (bookworm)"),
        state_dir=state_dir, name_prefix=prefix, base_packages=packages,
        boot_timeout=node.get("boot_timeout_seconds").integer(5, 600),
        hosts=tuple(hosts),
    )


def _network(node: Node) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(node.text(), strict=True)
    except ValueError:
        node.fail("an IPv4 network (10.0.3.0/24)")
    if not network.is_private or network.prefixlen > 28:
        node.fail("a private IPv4 network of /28 or larger")
    return network


def _address_in(node: Node, network: ipaddress.IPv4Network) -> str:
    try:
        address = ipaddress.IPv4Address(str(node.value))
    except ValueError:
        node.fail(f"an IPv4 address of the rehearsal network {network}")
    if address not in network or address in (network.network_address, network.broadcast_address):
        node.fail(f"a host address of the rehearsal network {network}")
    return str(address)


def own_addresses(inv: Inventory) -> frozenset[str]:
    """The addresses of the containers the rehearsal of `inv` creates (the only
    non-loopback targets tests and load runs accept unforced); empty for an
    inventory that is not a rehearsal."""
    if not (inv.env_dir / "rehearsal.yml").is_file():
        return frozenset()
    return frozenset(h.address for h in load_rehearsal(inv).hosts)
