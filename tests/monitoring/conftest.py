"""Fixtures of the monitoring tests: a real Alertmanager of the test's own on
loopback (the processes and PromQL helpers are in tests/prom_loopback.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prom_loopback import running_alertmanager

from moodleops.inventory import Inventory


@pytest.fixture
def alertmanager(local_inventory: Inventory, tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on loopback with the inventory's routing, delivering nowhere."""
    with running_alertmanager(local_inventory, tmp_path / "alertmanager") as base:
        yield base


@pytest.fixture(scope="module")
def module_alertmanager(local_inventory: Inventory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same, for a module's tests together (a test Prometheus sends its alerts there)."""
    with running_alertmanager(local_inventory, tmp_path_factory.mktemp("alertmanager")) as base:
        yield base
