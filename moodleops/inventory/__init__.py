"""The platform inventory: schools, Moodle pins, hosts. Load it with `load_inventory`."""

from moodleops.inventory.addresses import is_loopback
from moodleops.inventory.errors import InventoryError
from moodleops.inventory.loader import load_inventory
from moodleops.inventory.mirror import check_mirror
from moodleops.inventory.model import (
    AccountRules,
    Host,
    Inventory,
    MonthDay,
    Pin,
    Platform,
    School,
    Settings,
)

__all__ = [
    "AccountRules",
    "Host",
    "Inventory",
    "InventoryError",
    "MonthDay",
    "Pin",
    "Platform",
    "School",
    "Settings",
    "check_mirror",
    "is_loopback",
    "load_inventory",
]
