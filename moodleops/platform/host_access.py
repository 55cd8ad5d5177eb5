"""How the operator's side reaches a platform host: as Ansible does (the same
user, port, key and pinned known_hosts, computed by Ansible from the
inventory), running the toolkit role's launcher there as root. One source for
the pyinfra deploys and the commands that ask a host over SSH, so nothing
connects in a way the playbooks do not."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from typing import Any

from moodleops.inventory import Inventory
from moodleops.inventory.model import Host
from moodleops.platform.ansible_view import role_vars

_CONNECTION = ("ansible_connection", "ansible_user", "ansible_port", "ansible_ssh_private_key_file",
               "ansible_ssh_common_args", "ansible_become")
# `-o` options of ansible_ssh_common_args, as pyinfra's SSH connector names them.
_SSH_OPTIONS = {"userknownhostsfile": "ssh_known_hosts_file",
                "stricthostkeychecking": "ssh_strict_host_key_checking",
                # pyinfra offers only the given key when one is given.
                "identitiesonly": None}


class PyinfraHostError(ValueError):
    pass


class RemoteCommandFailed(RuntimeError):
    """`moodleops ...` ran on the host and failed there: its last line and exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def pyinfra_host(inv: Inventory, host: Host) -> tuple[str, dict[str, Any]]:
    """(pyinfra host name, its data) for an inventory host: "@local" for a
    host Ansible reaches locally (the controller runs its own checkout), else
    its inventory name with its address, the SSH data and the toolkit's
    launcher, run with sudo."""
    name = host.name
    v = role_vars(inv, "toolkit", host.groups[0], (*_CONNECTION, "toolkit_launcher", "moodleops_toolkit_venv"),
                  host=name, optional=_CONNECTION)
    if v.get("ansible_connection") == "local":
        return "@local", {}
    if v.get("ansible_connection", "ssh") != "ssh":
        raise PyinfraHostError(f"{name}: ansible_connection {v['ansible_connection']!r}: the deploys reach "
                               "hosts over SSH only")
    data: dict[str, Any] = {"ssh_hostname": host.address, "moodleops_bin": v["toolkit_launcher"], "host_inventory": "",
                            "toolkit_sudo": bool(v.get("ansible_become", False)),
                            "toolkit_venv": str(v["moodleops_toolkit_venv"])}
    for key, field in (("ansible_user", "ssh_user"), ("ansible_port", "ssh_port"),
                       ("ansible_ssh_private_key_file", "ssh_key")):
        if v.get(key):
            data[field] = int(v[key]) if field == "ssh_port" else str(v[key])
    data.update(_ssh_options(name, str(v.get("ansible_ssh_common_args") or "")))
    return name, data


def ssh_argv(inv: Inventory, host: Host, *, timeout_s: int = 10) -> tuple[list[str], dict[str, Any]]:
    """OpenSSH's argv up to and including the host's address, connected as
    pyinfra_host() (so as Ansible) connects, and that host's pyinfra data."""
    name, data = pyinfra_host(inv, host)
    if name == "@local":
        raise PyinfraHostError(f"{host.name}: Ansible reaches it locally: run the command here")
    argv = openssh_argv(host.address, user=str(data.get("ssh_user", "")), port=data.get("ssh_port"),
                        identity=str(data.get("ssh_key", "")), known_hosts=str(data.get("ssh_known_hosts_file", "")),
                        strict=str(data.get("ssh_strict_host_key_checking", "yes")), timeout_s=timeout_s)
    return argv, data


def openssh_argv(address: str, *, user: str = "", port: int | None = None, identity: str = "",
                 known_hosts: str = "", strict: str = "yes", timeout_s: int = 10) -> list[str]:
    """OpenSSH's argv up to and including `address`: no prompt, host keys
    checked (`strict`), only the given key when one is given."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout_s}", "-o", "ServerAliveInterval=15",
            "-o", f"StrictHostKeyChecking={strict}"]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    if known_hosts:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    return [*argv, address]


def ssh_command(inv: Inventory, host: Host, *args: str, timeout_s: int = 10, program: str = "") -> list[str]:
    """OpenSSH's argv running `moodleops ARGS` (the toolkit's launcher, or
    `program`, another launcher of it there) on `host` as root, connected as
    ssh_argv()."""
    argv, data = ssh_argv(inv, host, timeout_s=timeout_s)
    sudo = ["sudo", "-n"] if data["toolkit_sudo"] else []
    command = [*sudo, program or data["moodleops_bin"], *args]
    return [*argv, " ".join(shlex.quote(a) for a in command)]


def run_moodleops(inv: Inventory, host: Host, *args: str, timeout_s: float, capture: bool = True,
                  program: str = "", what: str = "") -> str:
    """`moodleops ARGS` on `host` through its launcher (or `program`, its
    words named `what` in messages); returns what it printed (with `capture`;
    else its output and progress go to ours as they come). Raises
    PyinfraHostError / AnsibleViewError (no way to connect), SshError (SSH
    itself failed: one line naming the host), TimeoutError, RemoteCommandFailed."""
    from moodleops.errors import oneline
    from moodleops.faults import ssh_fault

    argv = ssh_command(inv, host, *args, program=program)
    what = what or f"moodleops {' '.join(args[:2])}"
    try:
        if capture:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, text=True, timeout=timeout_s, check=False,
                                  capture_output=True)
            status, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            (status, err), out = _streamed(argv, timeout_s), ""
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"`{what}` gave no answer within {timeout_s:g} s") from None
    if status == 255:
        # A long command (streamed) may have lost its connection half-way: it may still run there.
        done = "nothing was run there" if capture else \
            f"if `{what}` had started there it may still run (it holds its lock): a re-run resumes or refuses"
        raise ssh_fault(host.ssh_address, err or "ssh exited 255", done=done)
    if status != 0:
        why = oneline(err or out or "").removeprefix("moodleops: error: ")[-300:]
        raise RemoteCommandFailed(f"`{what}` there: {why or f'exit {status}'}", status)
    return out


def _streamed(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """Runs `argv` with its stdout on ours and its stderr (progress) passed on
    line by line, except the command's own `moodleops: ...` lines and SSH's
    last words: kept for the caller's one line when it fails, passed on at the
    end when it succeeds. (status, kept)."""
    import threading
    from collections import deque

    kept: deque[str] = deque(maxlen=5)
    held: list[str] = []
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stream = proc.stderr

    def relay() -> None:
        for line in stream:
            kept.append(line)
            if line.startswith(("moodleops:", "ssh:")):
                held.append(line)
            else:
                print(line, end="", file=sys.stderr, flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
    if status == 0:
        print("".join(held), end="", file=sys.stderr)
        return status, ""
    last = [ln for ln in kept if ln.startswith(("moodleops:", "ssh:"))] or list(kept)[-1:]
    return status, "".join(last)


def _ssh_options(name: str, common_args: str) -> dict[str, str]:
    words = shlex.split(common_args)
    out: dict[str, str] = {}
    while words:
        word = words.pop(0)
        option = word[2:] if word.startswith("-o") and len(word) > 2 else words.pop(0) if word == "-o" and words \
            else None
        key, _, value = (option or "").partition("=")
        if option is None or key.lower() not in _SSH_OPTIONS or not value:
            raise PyinfraHostError(f"{name}: ansible_ssh_common_args {word!r} has no pyinfra equivalent here "
                                   f"(known: -o {', -o '.join(_SSH_OPTIONS)}); the deploys would not connect "
                                   "as the playbooks do")
        if _SSH_OPTIONS[key.lower()]:
            out[str(_SSH_OPTIONS[key.lower()])] = value
    return out


def main(argv: list[str]) -> int:
    """`python -m moodleops.platform.host_access ENV GROUP`: the group's
    pyinfra hosts as JSON, for a pyinfra inventory file. A separate process:
    Ansible, imported under pyinfra's gevent, makes gevent print a traceback
    for a probe Ansible itself catches."""
    from moodleops.errors import OpsError
    from moodleops.platform.ansible_view import AnsibleViewError
    from moodleops.validation import validate

    env, group = argv
    try:
        inv = validate(env)
        print(json.dumps([pyinfra_host(inv, h) for h in inv.group(group)]))
    except (OpsError, AnsibleViewError, ValueError) as exc:     # InventoryError, PyinfraHostError
        print(f"moodleops: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
