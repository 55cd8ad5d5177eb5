"""pyinfra deploy: run one incident runbook on the platform's web tier.

The runbook itself is `moodleops incident ...` (the same CLI and PHP helper
as on the local stack): it plans, takes the lock, applies through Moodle and
journals on the host. Moodle's database is shared by every web node, so the
runbook runs on ONE host (data `incident_runner`, set for the first web host
by playbooks/deploys/inventory.py; true by default, e.g. with @local); the
host journal is then fetched into the operator's copy.

Data (--data key=value):
  incident            the runbook's arguments after `moodleops incident`, e.g.
                      "suspend --school ifms_lot --reason 'phishing' --ticket SUP-7 --apply"
                      (without --apply the runbook only prints its dry run)
  moodleops_inventory inventory env name or directory (default: MOODLEOPS_INVENTORY or local)
  moodleops_bin       the moodleops command on the host (default: moodleops; the
                      inventory gives the toolkit role's launcher for SSH hosts)
  host_inventory      the --inventory given on the host (default: moodleops_inventory;
                      "" for the launcher's own copy)
  toolkit_sudo        run it as root with sudo (the inventory sets it from ansible_become)
  journal_copy        the operator's journal copy directory (default: ~/.local/state/moodleops)

Examples:
  pyinfra @local playbooks/deploys/incident.py --dry \\
      --data incident="suspend --school ifms_lot --reason x --ticket SUP-7"
  MOODLEOPS_INVENTORY=production pyinfra playbooks/deploys/inventory.py playbooks/deploys/incident.py \\
      --data incident="reinstate INC-20261124-143012-ab12 --apply"
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import python

from moodleops.incident.journal import DEFAULT_COPY_DIR, JOURNAL_NAME
from moodleops.incident.runbook import INCIDENTS_SUBDIR
from moodleops.inventory import load_inventory
from moodleops.site import site_of

EXIT_MARK = "moodleops-incident-exit="

incident_args = host.data.get("incident")
if not incident_args:
    raise DeployError("give the runbook: --data incident=\"suspend --school CODE --reason ... --ticket ...\"")
env = str(host.data.get("moodleops_inventory") or os.environ.get("MOODLEOPS_INVENTORY") or "local")
moodleops_bin = str(host.data.get("moodleops_bin") or "moodleops")
host_inventory = host.data.get("host_inventory")
host_inventory = env if host_inventory is None else str(host_inventory)
sudo = bool(host.data.get("toolkit_sudo", False))
copy_dir = Path(str(host.data.get("journal_copy") or DEFAULT_COPY_DIR)).expanduser()
inv = load_inventory(env)
host_journal = site_of(inv).state_dir / INCIDENTS_SUBDIR / JOURNAL_NAME
argv = [moodleops_bin, *(["--inventory", host_inventory] if host_inventory else []), "incident",
        *shlex.split(str(incident_args))]
# A host-side --journal-copy would land on the host: the operator's copy is fetched below instead.
command = " ".join(shlex.quote(a) for a in [*argv, "--journal-copy", "-"])


def run_runbook() -> None:
    _ok, output = host.run_shell_command(command=f"{command}; echo {EXIT_MARK}$?", _sudo=sudo)
    lines = output.stdout_lines
    code = next((int(ln[len(EXIT_MARK):]) for ln in reversed(lines) if ln.startswith(EXIT_MARK)), 99)
    for line in lines:
        if not line.startswith(EXIT_MARK):
            print(f"[{host.name}] {line}")
    for line in output.stderr_lines:
        print(f"[{host.name}] {line}")
    if code >= 2:
        raise DeployError(f"moodleops incident {incident_args} exited {code} on {host.name}: "
                          "nothing changed (see above)")
    # The whole journal: it is append-only, so the copy is a faithful mirror of the host's.
    copy_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    exists, _ = host.run_shell_command(command=f"test -f {shlex.quote(str(host_journal))}", _sudo=sudo)
    if exists:
        host.get_file(str(host_journal), str(copy_dir / f"incidents-{inv.env}-{host.name}.jsonl"), _sudo=sudo)


if host.data.get("incident_runner", True):
    python.call(name=f"moodleops incident {incident_args}", function=run_runbook)
