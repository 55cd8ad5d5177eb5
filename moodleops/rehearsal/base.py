"""The one base container every host is cloned from: Debian from the `debian`
template (debootstrap), the stack's packages installed but not started, a
`moodleops` user for SSH. Built once per base_key and kept as the cache."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from moodleops.rehearsal import lxc
from moodleops.rehearsal.spec import Rehearsal
from moodleops.rehearsal.ssh import USER
from moodleops.rehearsal.state import State

Say = Callable[[str], None]

_PATH = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive\n"


def _install_script(spec: Rehearsal) -> str:
    packages = " ".join(shlex.quote(p) for p in spec.base_packages)
    return _PATH + f"""
for _ in $(seq 60); do getent hosts deb.debian.org >/dev/null && break; sleep 1; done
systemctl list-unit-files --type=service --state=enabled --no-legend | awk '{{print $1}}' | sort > /root/.enabled-before
# Installed, not started: each host's roles start what that host runs.
printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
apt-get install -y -q --no-install-recommends {packages}
rm -f /usr/sbin/policy-rc.d
systemctl list-unit-files --type=service --state=enabled --no-legend | awk '{{print $1}}' | sort > /root/.enabled-after
comm -13 /root/.enabled-before /root/.enabled-after | grep -v '^ssh' | xargs -r systemctl disable
rm -f /root/.enabled-before /root/.enabled-after
apt-get clean
"""


def _finish_script(spec: Rehearsal) -> str:
    return _PATH + f"""
id {USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {USER}
echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}
chmod 440 /etc/sudoers.d/{USER}
printf 'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\nPermitRootLogin no\\n' > /etc/ssh/sshd_config.d/moodleops.conf
# Every clone makes its own host keys at first boot.
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\\nExecStartPre=\\nExecStartPre=/usr/bin/ssh-keygen -A\\nExecStartPre=/usr/sbin/sshd -t\\n' > /etc/systemd/system/ssh.service.d/hostkeys.conf
rm -f /etc/ssh/ssh_host_*
# LXC sets eth0's static address (lxc.net.0.ipv4.*); DHCP would fight it.
printf 'auto lo\\niface lo inet loopback\\n\\niface eth0 inet manual\\n' > /etc/network/interfaces
printf 'nameserver {spec.gateway}\\n' > /etc/resolv.conf
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
"""


def is_cached(spec: Rehearsal, state: State) -> bool:
    return state.base_complete and state.base_key == spec.base_key and lxc.exists(spec.base_container)


def ensure_base(spec: Rehearsal, state: State, say: Say) -> bool:
    """Build the base unless the cache holds it; True when it was built now.
    The caller has destroyed clones of an older base first."""
    if is_cached(spec, state):
        return False
    name = spec.base_container
    log = spec.state_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lxc.destroy(name)   # an older or half-built base
    state.base_key, state.base_complete = spec.base_key, False
    state.save(spec.state_dir)
    say(f"base: creating {name} (Debian {spec.release}, debootstrap; log {log})")
    lxc.create_debian(name, spec.release, log)
    lxc.start(name, log)
    try:
        say(f"base: installing {len(spec.base_packages)} packages")
        lxc.attach_logged(name, _install_script(spec), "installing the base packages", log)
        lxc.attach_logged(name, _finish_script(spec), "preparing the base for cloning", log)
    finally:
        lxc.stop(name)
    state.base_complete = True
    state.save(spec.state_dir)
    say(f"base: ready in {time.monotonic() - started:.0f} s")
    return True
