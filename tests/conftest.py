"""Shared fixtures. Tests marked `stack` run against the real local platform
(PostgreSQL, php-fpm, nginx, Moodle on 127.0.0.1), provisioned by this same
code through `ensure_provisioned` before the first of them runs."""

from __future__ import annotations

import pytest

from moodleops.inventory import Inventory, load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.platform.ansible import PlaybookResult
from moodleops.platform.provision import ensure_provisioned
from moodleops.site import Site, site_of


@pytest.fixture(scope="session")
def local_inventory() -> Inventory:
    return load_inventory("local")


@pytest.fixture(scope="session")
def provisioned(local_inventory: Inventory) -> PlaybookResult | None:
    """The local stack, provisioned (or found provisioned by this same code)."""
    return ensure_provisioned(local_inventory, echo=False)


@pytest.fixture(scope="session")
def site(local_inventory: Inventory, provisioned: PlaybookResult | None) -> Site:
    return site_of(local_inventory)


@pytest.fixture(scope="session")
def moodle(site: Site) -> MoodleCLI:
    return MoodleCLI(site)
