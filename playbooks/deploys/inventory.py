"""pyinfra inventory of the web tier, built from the moodleops inventory
(MOODLEOPS_INVENTORY, default production): no host is written twice. Only the
first web host runs incident runbooks (`incident_runner`): the database is shared.

  MOODLEOPS_INVENTORY=production pyinfra playbooks/deploys/inventory.py playbooks/deploys/incident.py ...
"""

from __future__ import annotations

import os

from moodleops.validation import validate

# The same validation as `moodleops inventory check` and the playbooks' vars plugin.
_inv = validate(os.environ.get("MOODLEOPS_INVENTORY", "production"))
web = [(h.address, {"incident_runner": i == 0, "moodleops_inventory": _inv.env})
       for i, h in enumerate(_inv.group("web"))]
