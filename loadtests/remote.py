"""The fixture commands for a Moodle that is not on this machine (the
rehearsal, a platform reached from an operator's machine): the same
`moodleops loadtest ...` runs on the first web node through the toolkit's
launcher, over SSH as Ansible connects, and the fixture's record (what a run
here needs: accounts, ids, password) comes back over SSH's stdout into this
machine's fixture directory (0600)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moodleops.loadtests.fixture import LoadtestError, save_record

from moodleops.inventory import Host, Inventory
from moodleops.platform.ansible_view import AnsibleViewError
from moodleops.platform.host_access import PyinfraHostError, RemoteCommandFailed, run_moodleops


class RemoteFailed(RemoteCommandFailed, LoadtestError):
    """The command ran on the web node and failed there: its own line and exit status."""


def first_web_node(inv: Inventory) -> Host:
    return inv.group("web")[0]


def on_web_node(inv: Inventory, *args: str, capture: bool = False, timeout_s: float = 3600) -> str:
    """`moodleops ARGS` on the first web node; its output goes to ours (progress),
    or is returned with `capture`. SSH's failure: SshError's one line; the
    command's own: RemoteFailed with its line and status."""
    node = first_web_node(inv)
    try:
        return run_moodleops(inv, node, *args, timeout_s=timeout_s, capture=capture)
    except (AnsibleViewError, PyinfraHostError, TimeoutError) as exc:
        raise LoadtestError(f"{node.name}: {exc}") from None
    except RemoteCommandFailed as exc:
        raise RemoteFailed(f"on {node.name}: {exc}", exc.status) from None


def fetch_record(inv: Inventory, prefix: str, directory: Path) -> dict[str, Any]:
    """The record `prepare` left on the web node, saved here as a local prepare saves it."""
    text = on_web_node(inv, "loadtest", "record", "--prefix", prefix, capture=True)
    try:
        record = json.loads(text)
    except ValueError:
        raise LoadtestError(f"on {first_web_node(inv).name}: `moodleops loadtest record` did not print a "
                            "fixture record") from None
    if not isinstance(record, dict):
        raise LoadtestError(f"on {first_web_node(inv).name}: the fixture record is not a JSON object")
    save_record(directory, prefix, record)
    return record
