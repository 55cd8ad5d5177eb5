"""The LXC command-line tools, as the rehearsal uses them. Every failure is an
LxcError carrying one line: what failed, for which container, and the tool's
own last words."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

TOOLS = ("lxc-create", "lxc-start", "lxc-stop", "lxc-destroy", "lxc-copy", "lxc-attach", "lxc-info", "lxc-ls")
LXC_PATH = Path("/var/lib/lxc")


class LxcError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(argv: Sequence[str], what: str, *, input_text: str | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise LxcError(f"{what}: {argv[0]} is not installed (apt-get install lxc debootstrap)") from None
    except subprocess.TimeoutExpired:
        raise LxcError(f"{what}: {argv[0]} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise LxcError(f"{what}: {argv[0]} exited {proc.returncode}: {last[-1] if last else 'no output'}")
    return proc


def names() -> list[str]:
    return _run(["lxc-ls", "-1"], "listing containers").stdout.split()


def exists(name: str) -> bool:
    return (LXC_PATH / name / "config").is_file()


def state(name: str) -> str:
    """RUNNING, STOPPED, ... or ABSENT."""
    if not exists(name):
        return "ABSENT"
    proc = _run(["lxc-info", "-n", name, "-sH"], f"{name}: reading its state", check=False)
    return proc.stdout.strip() or "UNKNOWN"


def running() -> list[str]:
    return _run(["lxc-ls", "-1", "--running"], "listing running containers").stdout.split()


def create_debian(name: str, release: str, log: Path) -> None:
    """A Debian system container from the download-free `debian` template (debootstrap)."""
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.run(["lxc-create", "-n", name, "-t", "debian", "--", "-r", release],
                              stdout=out, stderr=subprocess.STDOUT, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise LxcError(f"{name}: lxc-create -t debian failed (exit {proc.returncode}): see {log}")


def clone_snapshot(base: str, name: str) -> None:
    _run(["lxc-copy", "-n", base, "-N", name, "-s", "-B", "overlayfs"], f"{name}: cloning {base}")


def config_path(name: str) -> Path:
    return LXC_PATH / name / "config"


def start(name: str, log: Path) -> None:
    _run(["lxc-start", "-n", name, "-l", "INFO", "-o", str(log)], f"{name}: starting (log: {log})")


def stop(name: str) -> None:
    # A clean shutdown first (systemd inside), then the hard way.
    if state(name) == "RUNNING" and \
            _run(["lxc-stop", "-n", name, "-t", "20"], f"{name}: stopping", check=False).returncode != 0:
        _run(["lxc-stop", "-n", name, "-k"], f"{name}: killing")


def destroy(name: str) -> None:
    if exists(name):
        stop(name)
        _run(["lxc-destroy", "-n", name], f"{name}: destroying")


def attach(name: str, script: str, what: str, *, timeout: float = 900) -> str:
    """Run a shell script as root inside the container; its stdout."""
    return _run(["lxc-attach", "-n", name, "--clear-env", "--", "/bin/bash", "-euo", "pipefail", "-s"],
                f"{name}: {what}", input_text=script, timeout=timeout).stdout


def attach_logged(name: str, script: str, what: str, log: Path, *, timeout: float = 1800) -> None:
    """Like `attach`, the output streamed to `log` as it comes (long installs show progress there)."""
    with open(log, "a", encoding="utf-8") as out:
        try:
            proc = subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "/bin/bash", "-euo",
                                   "pipefail", "-s"], input=script, stdout=out, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LxcError(f"{name}: {what}: did not finish within {timeout:.0f} s: see {log}") from None
    if proc.returncode != 0:
        raise LxcError(f"{name}: {what} failed (exit {proc.returncode}): see {log}")
