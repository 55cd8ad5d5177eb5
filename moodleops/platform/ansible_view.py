"""A role's variables as Ansible itself computes them for a host (role
defaults, group_vars, the validated inventory of the vars plugin, Jinja
rendered by Ansible), for the controller-side commands that must know where a
role put something (`platform status` asks the monitoring role for its ports).
Python never re-implements Ansible's precedence or templating."""

from __future__ import annotations

import os
import warnings
from typing import Any

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory


class AnsibleViewError(RuntimeError):
    pass


def role_vars(inv: Inventory, role: str, group: str, names: tuple[str, ...] | str, *,
              host: str | None = None, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Variables of `role` for the first host of `group` (or for `host`, one of
    the group's): `names` lists them, or is a prefix (every variable starting
    with it). Names in `optional` may be undefined: they are then left out."""
    # Read once at import by ansible.constants: the checkout's configuration
    # (roles path, the moodleops vars plugin), as for ansible-playbook.
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_ROOT / "ansible.cfg"))
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook.play import Play
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    hosts = inv.group(group)
    if not hosts:
        raise AnsibleViewError(f"inventory {inv.env}: no host in group {group}")
    try:
        with warnings.catch_warnings():
            # As every ansible command does first; a second call only warns.
            warnings.simplefilter("ignore")
            init_plugin_loader()
        loader = DataLoader()
        loader.set_basedir(str(REPO_ROOT / "playbooks"))
        # hosts.yml, not the directory: rehearsal.yml beside it is no Ansible inventory.
        manager = InventoryManager(loader=loader, sources=[str(inv.env_dir / "hosts.yml")])
        variables = VariableManager(loader=loader, inventory=manager)
        play = Play.load({"hosts": group, "gather_facts": False, "roles": [role]},
                         variable_manager=variables, loader=loader)
        name = host or hosts[0].name
        found = variables.get_vars(play=play, host=manager.get_host(name), include_hostvars=False)
        wanted = [n for n in found if n.startswith(names)] if isinstance(names, str) else \
            [n for n in names if n in found or n not in optional]
        templar = Templar(loader=loader, variables=found)
        return {n: templar.template(found[n]) for n in wanted}
    except (AnsibleError, KeyError) as exc:
        raise AnsibleViewError(f"Ansible cannot compute the variables of role {role} for {host or hosts[0].name}: "
                               f"{' '.join(str(exc).split())}") from None
