"""An sshd of a test's own on 127.0.0.1 (a free port, a generated host key, one
authorised client key, stopped by the test): the "remote host" of the tests
that reach hosts over SSH without containers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prom_loopback import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    """A new ed25519 key pair without passphrase at `path`; the public key's line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text(encoding="ascii").strip()


@dataclass
class Sshd:
    d: Path
    port: int
    host_pub: str
    key: Path                 # the client key in authorized_keys
    known_hosts: Path         # [127.0.0.1]:port with the real host key
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, d: Path) -> Sshd:
        if not os.path.exists(SSHD):
            pytest.fail("sshd is missing: ./ops test installs openssh-server (requirements-test-debian.txt)")
        d.mkdir(mode=0o700, exist_ok=True)
        host_pub = keygen(d / "host_key")
        client_pub = keygen(d / "client_key")
        (d / "authorized_keys").write_text(client_pub + "\n", encoding="ascii")
        port = free_port()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n", encoding="ascii")
        # MaxStartups: the fault matrix and the Locust workers open several sessions at once.
        (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 30
""", encoding="ascii")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)     # sshd's privilege-separation directory
        with open(d / "sshd.log", "wb") as log:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text(errors='replace')[-400:]}")
                time.sleep(0.1)
        return cls(d, port, host_pub, d / "client_key", d / "known_hosts", proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
