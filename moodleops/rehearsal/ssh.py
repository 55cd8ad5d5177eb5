"""The rehearsal reaches its hosts as production does: SSH as `moodleops` with
a key it generates, host keys pinned in its own known_hosts (read from each
container directly, never trusted on first use)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from moodleops.rehearsal.spec import Rehearsal, RehearsalHost

USER = "moodleops"


def ssh_dir(spec: Rehearsal) -> Path:
    return spec.state_dir / "ssh"


def key_path(spec: Rehearsal) -> Path:
    return ssh_dir(spec) / "id_ed25519"


def known_hosts(spec: Rehearsal) -> Path:
    return ssh_dir(spec) / "known_hosts"


def ensure_key(spec: Rehearsal) -> str:
    """The rehearsal's key pair (created once, mode 0600); returns the public key."""
    directory = ssh_dir(spec)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = key_path(spec)
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"moodleops-{spec.env}",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
    return key.with_suffix(".pub").read_text(encoding="utf-8").strip()


def ssh_argv(spec: Rehearsal, host: RehearsalHost, *command: str) -> list[str]:
    return ["ssh", "-i", str(key_path(spec)), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts(spec)}",
            "-o", "ConnectTimeout=5", f"{USER}@{host.address}", *command]


def wait_port(address: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def write_known_hosts(spec: Rehearsal, host_keys: dict[str, str]) -> None:
    """host name -> its public host key ("ssh-ed25519 AAAA...")."""
    lines = [f"{spec.host(name).address},{name} {key}" for name, key in sorted(host_keys.items())]
    path = known_hosts(spec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


def probe(spec: Rehearsal, host: RehearsalHost) -> str | None:
    """None when `moodleops` logs in with the key and may sudo; else what is wrong, in a few words."""
    try:
        proc = subprocess.run(ssh_argv(spec, host, "sudo", "-n", "true"), capture_output=True, text=True,
                              timeout=20, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"SSH to {host.address} timed out"
    if proc.returncode == 0:
        return None
    err = proc.stderr.strip()
    if "Permission denied" in err:
        return f"SSH key refused for {USER}@{host.address}"
    if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        return f"host key of {host.address} is not the one recorded in {known_hosts(spec)}"
    if "sudo" in err:
        return f"{USER} may not sudo without a password on {host.address}"
    last = err.splitlines()[-1] if err else f"ssh exited {proc.returncode}"
    return f"SSH to {host.address} failed: {last}"
