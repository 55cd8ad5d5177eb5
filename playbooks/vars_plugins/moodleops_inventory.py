"""Ansible vars plugin: the validated moodleops inventory as variables.

Every play, however it is started (`moodleops platform up` or
`ansible-playbook -i inventory/production playbooks/site.yml` typed by hand),
gets its pins, schools, account rules and platform settings from the same
loader as the moodleops commands, after the same validation: a bad value
stops ansible-playbook with the line `moodleops inventory check` prints.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: moodleops_inventory
    short_description: group_vars/host_vars, then the validated moodleops inventory as variables
    description:
      - Loads group_vars/ and host_vars/ exactly as ansible.builtin.host_group_vars, which it
        replaces, so that the precedence between the two is fixed.
      - For an inventory directory inventory/<env>/ (or its hosts.yml), validates the whole
        moodleops inventory (moodleops.validation.validate) and gives the group C(all) the
        variables of moodleops.inventory.ansible_vars (moodle_pins, moodle_schools,
        moodle_accounts, moodle_membership and the platform settings), over group_vars.
      - Stops the run with the validation error when a value is invalid.
    requirements:
      - the moodleops package of this checkout (run from its virtualenv)
"""

import os
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.inventory.group import InventoryObjectType
from ansible.plugins.vars import BaseVarsPlugin
from ansible.plugins.vars.host_group_vars import VarsModule as HostGroupVars
from ansible.utils.unsafe_proxy import wrap_var
from ansible.utils.vars import combine_vars

CHECKOUT = Path(__file__).resolve().parents[2]


def _moodleops_vars(path: str) -> dict:
    try:
        import moodleops
        from moodleops.inventory import InventoryError
        from moodleops.inventory.ansible_vars import inventory_vars
        from moodleops.validation import validate
    except ImportError as exc:
        raise AnsibleError(f"moodleops: error: the moodleops vars plugin cannot import moodleops ({exc}): "
                           f"run ansible-playbook from the virtualenv of {CHECKOUT} (./ops test or "
                           "./ops up creates it)") from None
    if Path(moodleops.REPO_ROOT).resolve() != CHECKOUT:
        raise AnsibleError(f"moodleops: error: ansible-playbook runs the playbooks of {CHECKOUT} with the "
                           f"moodleops package of {moodleops.REPO_ROOT}: use the virtualenv of {CHECKOUT}")
    try:
        inv = validate(path)
    except InventoryError as exc:
        # The very line `moodleops inventory check` prints.
        raise AnsibleError(f"moodleops: error: {' '.join(str(exc).split())}") from None
    return inventory_vars(inv)


class VarsModule(BaseVarsPlugin):
    REQUIRES_ENABLED = True
    is_stateless = True

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, dict] = {}
        self._group_vars = HostGroupVars()

    def get_vars(self, loader, path, entities, cache=True):
        super().get_vars(loader, path, entities)
        if not isinstance(entities, list):
            entities = [entities]
        data = self._group_vars.get_vars(loader, path, entities, cache)
        if not any(e.base_type is InventoryObjectType.GROUP and e.name == "all" for e in entities):
            return data
        env_dir = os.path.realpath(path)
        # Also called for the plays' own directory (group_vars beside a playbook,
        # the current directory of an ad-hoc command): those are not inventories.
        if not os.path.isfile(os.path.join(env_dir, "hosts.yml")):
            return data
        if env_dir not in self._cache:
            self._cache[env_dir] = wrap_var(_moodleops_vars(env_dir))
        return combine_vars(data, self._cache[env_dir])
