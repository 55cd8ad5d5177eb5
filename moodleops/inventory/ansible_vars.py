"""The validated inventory as Ansible variables: what the vars plugin
(playbooks/vars_plugins/moodleops_inventory.py) gives every host.

  moodle_pins       {core: {...}, plugins: [{...}, ...]}, the pins of inventory/moodle.yml
  moodle_schools    [{code, name, category_idnumber, cohort_idnumber, ...}, ...]
  moodle_accounts   {account_type_field, account_types, hosted_types, student_types}
  moodle_membership {method, profile_field}
  moodleops_inventory_dir   the environment directory, for the moodleops commands a play runs
  and every setting of moodleops.inventory.settings.SETTINGS under its own name.

Versions are the text written in the inventory ("2022112811.00"): Moodle
compares that text, and the release directory name is made from it.
"""

from __future__ import annotations

from typing import Any

from moodleops.inventory.model import Inventory, Pin
from moodleops.inventory.settings import ansible_vars as settings_vars


def inventory_vars(inv: Inventory) -> dict[str, Any]:
    accounts = inv.platform.accounts
    return {
        **settings_vars(inv.settings),
        "moodleops_inventory_dir": str(inv.env_dir),
        "moodle_pins": {"core": pin_vars(inv.core), "plugins": [pin_vars(p) for p in inv.plugins]},
        "moodle_schools": [
            {"code": s.code, "name": s.name, "category_idnumber": s.category_idnumber,
             "cohort_idnumber": s.cohort_idnumber, "students": s.students, "trainers": s.trainers,
             "referents": list(s.referents), "alert_bytes": s.alert_bytes}
            for s in inv.schools],
        "moodle_accounts": {
            "account_type_field": accounts.account_type_field,
            "account_types": [*accounts.student_types, *accounts.hosted_types],
            "hosted_types": list(accounts.hosted_types),
            "student_types": list(accounts.student_types),
        },
        "moodle_membership": {"method": inv.platform.membership_method,
                              "profile_field": inv.platform.membership_profile_field},
    }


def pin_vars(pin: Pin) -> dict[str, Any]:
    out: dict[str, Any] = {"version": pin.version_text, "release": pin.release, "file": pin.file,
                           "sha256": pin.sha256, "url": pin.url}
    if pin.component != "core":
        out.update(component=pin.component, install_path=pin.install_path,
                   dependencies={k: str(v) for k, v in pin.dependencies.items()},
                   contract_name=pin.contract_name, secrets=list(pin.secrets))
        if pin.requires is not None:
            out["requires"] = str(pin.requires)
    return out
