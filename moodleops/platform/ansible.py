"""Running the playbooks: one function, streaming Ansible's own output (the
progress a sysadmin expects) while keeping the recap for the caller."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@dataclass
class PlaybookResult:
    returncode: int
    changed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    unreachable: dict[str, int] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not any(self.failed.values()) and not any(self.unreachable.values())


def run_playbook(inv: Inventory, playbook: str, extra_args: Sequence[str] = (), *,
                 echo: bool = True, env: dict[str, str] | None = None) -> PlaybookResult:
    """Run playbooks/<playbook> against the inventory's hosts.yml."""
    binary = Path(sys.executable).with_name("ansible-playbook")
    # Killed when this process dies (util-linux's setpriv sets the parent-death
    # signal, then execs): the platform lock is this process's - its database
    # session, or its SSH connection to the node holding it - and a play must
    # not run on without it.
    argv = ["setpriv", "--pdeathsig", "KILL", "--", str(binary), "-i", str(inv.env_dir / "hosts.yml"), str(REPO_ROOT / "playbooks" / playbook),
            *extra_args]
    run_env = {**os.environ, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
               **(env or {})}
    result = PlaybookResult(returncode=-1)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=run_env, cwd=REPO_ROOT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            result.output.append(line.rstrip("\n"))
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            m = RECAP.match(line)
            if m:
                host = m.group(1)
                result.changed[host] = int(m.group(3))
                result.unreachable[host] = int(m.group(4))
                result.failed[host] = int(m.group(5))
        result.returncode = proc.wait()
    return result
