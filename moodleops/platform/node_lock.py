"""The platform lock for a command run where Moodle's database cannot be
reached (an operator's machine: the database admits only the web and
monitoring hosts): taken on the first web node by `moodleops platform
hold-lock` over SSH, held while this side works, released when this side
closes the connection's stdin - or dies, or loses the connection: the lock
never outlives its holder (moodleops/platform/lock.py).

    with operation_lock(inv, "platform upgrade"):
        ...          # no incident, upgrade, backup or restore runs meanwhile
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from moodleops.inventory import Inventory
from moodleops.platform.guard import platform_operation
from moodleops.platform.host_access import ssh_command
from moodleops.site import site_of

HELD = "held"           # what `hold-lock` prints once it holds the lock
_ANSWER_S = 60.0        # for the node to connect, take the lock and say so


class NodeLockRefused(RuntimeError):
    """The node could not take the lock (busy, an incident open, no database), or could not be reached."""


def hold_here(env: str, what: str) -> int:
    """`platform hold-lock` on a web node: hold the lock until stdin ends."""
    from moodleops.inventory import load_inventory

    inv = load_inventory(env)
    site = site_of(inv)
    site.require_here()
    with platform_operation(site, inv.env, what):
        print(HELD, flush=True)
        sys.stdin.read()        # until the caller closes it, or its connection ends
    return 0


@contextmanager
def operation_lock(inv: Inventory, what: str) -> Iterator[str]:
    """The platform lock for the body: here when Moodle is on this machine,
    else on the first web node over SSH. Yields where it is held."""
    site = site_of(inv)
    if site.moodle_here:
        with platform_operation(site, inv.env, what):
            yield "here"
        return
    node = inv.group("web")[0]
    who = f"{what} by {getpass.getuser()} from {socket.gethostname()}"
    argv = ssh_command(inv, node, "platform", "hold-lock", "--what", who)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(_ANSWER_S)
    if not first or first[0].strip() != HELD:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        last = [ln for ln in err.splitlines() if ln.strip()][-1:] or [f"no answer within {_ANSWER_S:g} s"]
        raise NodeLockRefused(f"the platform lock could not be taken on {node.name} (over SSH): "
                              f"{last[0].removeprefix('moodleops: error: ')}")
    try:
        yield node.name
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
