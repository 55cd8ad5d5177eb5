"""`up`, `status` and `down` of the rehearsal. Each is idempotent; every step is
recorded (state.py) before it acts, so `down` removes whatever a killed `up` made."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from moodleops.platform.secrets import BACKUP_NAMES, ensure_local_secrets
from moodleops.rehearsal import lxc, network, ssh
from moodleops.rehearsal.base import ensure_base
from moodleops.rehearsal.spec import Rehearsal, RehearsalHost
from moodleops.rehearsal.state import State, exclusive

Say = Callable[[str], None]
_MARK = "# moodleops rehearsal"


class RehearsalError(RuntimeError):
    """One line for the operator: which host, what failed, what to do."""


def _host_config(spec: Rehearsal, host: RehearsalHost) -> str:
    return "\n".join([
        f"{_MARK}: {host.name} of inventory '{spec.env}', base {spec.base_key}",
        f"lxc.uts.name = {host.name}",
        f"lxc.net.0.ipv4.address = {host.address}/{spec.prefix_len} {spec.network.broadcast_address}",
        f"lxc.net.0.ipv4.gateway = {spec.gateway}",
        # FUSE for the network filesystem of moodledata (sshfs: this kernel has no NFS).
        "lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0",
        "lxc.start.auto = 0",
        "",
    ])


def _hosts_file(spec: Rehearsal) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address} {h.name}" for h in spec.hosts]
    return "\n".join(lines) + "\n"


def _prepare_script(spec: Rehearsal, host: RehearsalHost, public_key: str) -> str:
    """Run in a host at each `up`: its name, the rehearsal's hosts, the operator's key."""
    return "\n".join([
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        f"echo {shlex.quote(host.name)} > /etc/hostname",
        f"hostname {shlex.quote(host.name)}",
        f"printf %s {shlex.quote(_hosts_file(spec))} > /etc/hosts",
        f"install -d -m 700 -o {ssh.USER} -g {ssh.USER} /home/{ssh.USER}/.ssh",
        f"printf '%s\\n' {shlex.quote(public_key)} > /home/{ssh.USER}/.ssh/authorized_keys",
        f"chown {ssh.USER}:{ssh.USER} /home/{ssh.USER}/.ssh/authorized_keys",
        f"chmod 600 /home/{ssh.USER}/.ssh/authorized_keys",
        # Host keys appear at sshd's first start (base.py); wait for them.
        "for _ in $(seq 100); do [ -s /etc/ssh/ssh_host_ed25519_key.pub ] && break; sleep 0.2; done",
        "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub",
        "",
    ])


def _check_tools() -> None:
    missing = lxc.missing_tools()
    if missing:
        raise RehearsalError(f"lxc is not installed on this machine ({', '.join(missing)} missing): "
                             "apt-get install lxc debootstrap, then run `moodleops rehearsal up` again")


def prepare(spec: Rehearsal, say: Say) -> None:
    """The network and the cached base, no host: what makes the next `up` take
    seconds. Run ahead of time (the test suite starts it in the background)."""
    _check_tools()
    with exclusive(spec.state_dir, say):
        _prepare(spec, State.load(spec.state_dir), say)


def _prepare(spec: Rehearsal, state: State, say: Say) -> None:
    # The network first: the base build needs it, and `down` must know whether it is ours.
    if not network.is_up(spec):
        state.network_started = True
        state.save(spec.state_dir)
    _lxc(lambda: network.ensure_up(spec))
    say(f"network: {spec.bridge} {spec.gateway}/{spec.prefix_len} (lxc-net)")

    stale = [c for c, key in state.containers.items() if key != spec.base_key]
    if not (state.base_complete and state.base_key == spec.base_key):
        stale = list(state.containers)
    for container in stale:   # snapshots of a base about to be rebuilt
        say(f"{container}: cloned from an older base, removing")
        _lxc(lambda c=container: lxc.destroy(c))
        del state.containers[container]
        state.save(spec.state_dir)
    _lxc(lambda: ensure_base(spec, state, say))


def up(spec: Rehearsal, say: Say) -> None:
    _check_tools()
    started = time.monotonic()
    with exclusive(spec.state_dir, say):
        state = State.load(spec.state_dir)
        _prepare(spec, state, say)
        _up_hosts(spec, state, say)
    say(f"rehearsal '{spec.env}' up: {len(spec.hosts)} hosts over SSH in {time.monotonic() - started:.0f} s")


def _up_hosts(spec: Rehearsal, state: State, say: Say) -> None:
    public_key = ssh.ensure_key(spec)
    created = ensure_local_secrets(spec.state_dir / "secrets", BACKUP_NAMES)
    if created:
        say(f"secrets: generated {', '.join(created)} in {spec.state_dir / 'secrets'}")

    logs = spec.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for host in spec.hosts:
        if not lxc.exists(host.container):
            state.containers[host.container] = spec.base_key
            state.save(spec.state_dir)
            _lxc(lambda h=host: lxc.clone_snapshot(spec.base_container, h.container), host)
            config = lxc.config_path(host.container)
            # lxc-copy names the host after the container; the inventory's name wins.
            kept = [line for line in config.read_text(encoding="utf-8").splitlines()
                    if not line.startswith("lxc.uts.name")]
            config.write_text("\n".join(kept) + "\n" + _host_config(spec, host), encoding="utf-8")
            say(f"{host.name}: cloned {host.container} ({host.address})")
        state.containers.setdefault(host.container, spec.base_key)
        if lxc.state(host.container) != "RUNNING":
            _lxc(lambda h=host: lxc.start(h.container, logs / f"{h.container}.log"), host)

    deadline = time.monotonic() + spec.boot_timeout
    host_keys: dict[str, str] = {}
    for host in spec.hosts:
        if not ssh.wait_port(host.address, 22, deadline):
            raise RehearsalError(
                f"{host.name}: did not answer on SSH ({host.address}:22) within {spec.boot_timeout} s of "
                f"starting; see {logs / (host.container + '.log')} and `lxc-attach -n {host.container}`; "
                "`moodleops rehearsal down` removes everything")
        out = _lxc(lambda h=host: lxc.attach(h.container, _prepare_script(spec, h, public_key),
                                              "installing the rehearsal's SSH key"), host)
        host_keys[host.name] = out.strip().splitlines()[-1]
    ssh.write_known_hosts(spec, host_keys)

    for host in spec.hosts:
        problem = ssh.probe(spec, host)
        if problem:
            raise RehearsalError(f"{host.name}: {problem}; run `moodleops rehearsal up` again, or "
                                 "`moodleops rehearsal down` then `up`")


@dataclass(frozen=True)
class HostStatus:
    host: RehearsalHost
    state: str          # the container's: RUNNING, STOPPED, ABSENT
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.state == "RUNNING" and self.problem is None


def status(spec: Rehearsal) -> list[HostStatus]:
    _check_tools()
    result = []
    for host in spec.hosts:
        st = lxc.state(host.container)
        problem = None
        if st == "ABSENT":
            problem = "no container: run `moodleops rehearsal up`"
        elif st != "RUNNING":
            problem = f"container {st.lower()}: run `moodleops rehearsal up`"
        else:
            problem = ssh.probe(spec, host)
        result.append(HostStatus(host, st, problem))
    return result


def down(spec: Rehearsal, say: Say, *, purge: bool = False) -> None:
    """Remove every host container (and the base with `purge`), then the network
    if the rehearsal started it. Goes on past a failure and reports it at the end."""
    _check_tools()
    with exclusive(spec.state_dir, say):
        _down(spec, State.load(spec.state_dir), say, purge)


def _down(spec: Rehearsal, state: State, say: Say, purge: bool) -> None:
    ours = set(state.containers) | {h.container for h in spec.hosts}
    ours |= {n for n in lxc.names() if n.startswith(spec.name_prefix) and n != spec.base_container}
    failures = []
    for container in sorted(ours):
        try:
            if lxc.exists(container):
                lxc.destroy(container)
                say(f"{container}: removed")
            state.containers.pop(container, None)
            state.save(spec.state_dir)
        except lxc.LxcError as exc:
            failures.append(str(exc))
    if purge and not failures:
        try:
            lxc.destroy(spec.base_container)
            state.base_key, state.base_complete = "", False
            state.save(spec.state_dir)
            say(f"{spec.base_container}: removed (the next `up` rebuilds it)")
        except lxc.LxcError as exc:
            failures.append(str(exc))
    if state.network_started:
        others = [n for n in lxc.running() if n not in ours]
        if others:
            say(f"network: left up, other containers use it ({', '.join(others)})")
        else:
            network.stop()
            say(f"network: {spec.bridge} stopped")
        state.network_started = False
        state.save(spec.state_dir)
    if failures:
        raise RehearsalError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
                             + "; run `moodleops rehearsal down` again")


def _lxc(action: Callable[[], object], host: RehearsalHost | None = None):  # type: ignore[no-untyped-def]
    try:
        return action()
    except lxc.LxcError as exc:
        hint = "; `moodleops rehearsal down` removes what was made"
        raise RehearsalError(f"{exc}{hint}") from None
