"""The containers' network: the lxc-net bridge (NAT to the host's own routes,
dnsmasq for DNS), started here because machines without systemd do not start it."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from moodleops.rehearsal.lxc import LxcError
from moodleops.rehearsal.spec import Rehearsal

LXC_NET = Path("/usr/libexec/lxc/lxc-net")
NETWORK_UP = Path("/run/lxc/network_up")


def bridge_addresses(bridge: str) -> list[str]:
    proc = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", bridge], capture_output=True, text=True,
                          check=False)
    return [line.split()[3] for line in proc.stdout.splitlines() if len(line.split()) > 3]


def is_up(spec: Rehearsal) -> bool:
    return NETWORK_UP.exists() and bool(bridge_addresses(spec.bridge))


def ensure_up(spec: Rehearsal) -> bool:
    """Start lxc-net unless it runs; True when this call started it. The bridge
    must carry the inventory's gateway, or the static addresses would not route."""
    started = False
    if not is_up(spec):
        if not LXC_NET.exists():
            raise LxcError(f"network: {LXC_NET} is missing (apt-get install lxc)")
        proc = subprocess.run([str(LXC_NET), "start"], capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0 or not bridge_addresses(spec.bridge):
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise LxcError(f"network: lxc-net start did not bring up {spec.bridge}: {last}")
        started = True
    wanted = f"{spec.gateway}/{spec.prefix_len}"
    have = bridge_addresses(spec.bridge)
    if wanted not in have:
        raise LxcError(f"network: {spec.bridge} has {', '.join(have) or 'no address'}, the rehearsal "
                       f"inventory wants {wanted}: align /etc/default/lxc-net with rehearsal.yml")
    if ipaddress.IPv4Interface(wanted).network != spec.network:
        raise LxcError(f"network: gateway {wanted} is not on {spec.network}")
    return started


def stop() -> None:
    if NETWORK_UP.exists():
        subprocess.run([str(LXC_NET), "stop"], capture_output=True, text=True, check=False, timeout=60)
