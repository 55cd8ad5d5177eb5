"""The whole inventory of one environment, validated: what `moodleops inventory
check` and the playbooks' vars plugin both run, so the two refuse the same bad
value with the same line.

load_inventory reads the shared model (platform, schools, pins, hosts,
settings); each area that keeps its own file beside it (capacity.yml,
loadmodel.yml, the backup_* settings) validates it with its own reader, called
here so that nothing is first noticed in the middle of a run.
"""

from __future__ import annotations

from pathlib import Path

from moodleops.inventory import Inventory, load_inventory


def validate(env: str, root: Path | None = None) -> Inventory:
    """The inventory of `env`, with every area's file checked; InventoryError otherwise."""
    # Imported here: these area modules import moodleops.inventory themselves.
    from moodleops.backup.config import backup_config
    from moodleops.backup.schedule import schedule_config
    from moodleops.capacity.config import load_params
    from moodleops.loadtests.model import load_model

    inv = load_inventory(env, root)
    load_params(inv)
    load_model(inv)
    backup_config(inv)
    schedule_config(inv)
    return inv
