"""pyinfra inventory of the web tier, built from the moodleops inventory
(MOODLEOPS_INVENTORY, default production): no host is written twice. Only the
first web host runs incident runbooks (`incident_runner`): the database is shared.

Each host is reached as Ansible reaches it (moodleops/platform/host_access.py:
its address, user, key and pinned known_hosts, computed by Ansible), and the
runbook runs there as root through the toolkit role's launcher, which reads the
host's own copy of the inventory.

  MOODLEOPS_INVENTORY=production pyinfra playbooks/deploys/inventory.py playbooks/deploys/incident.py ...
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from pyinfra.api.exceptions import InventoryError

# pyinfra names a host it cannot reach in one line; paramiko would add its traceback.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

_env = os.environ.get("MOODLEOPS_INVENTORY", "production")
# Validated and computed as for `moodleops inventory check` and the playbooks, in
# a process of its own (Ansible and pyinfra's gevent do not mix).
_found = subprocess.run([sys.executable, "-m", "moodleops.platform.host_access", _env, "web"],
                        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
if _found.returncode != 0:
    raise InventoryError(_found.stderr.strip() or f"moodleops.platform.host_access exited {_found.returncode}")
web = [(name, {**data, "incident_runner": i == 0, "moodleops_inventory": _env})
       for i, (name, data) in enumerate(json.loads(_found.stdout))]
