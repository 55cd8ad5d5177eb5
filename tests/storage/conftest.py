"""Fixtures of the storage tests: the test's own world in the shared Moodle,
built once per session through Moodle and removed at the end."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Iterator

import pytest
from moodleops.exporters.storage_config import config_from_inventory
from moodleops.exporters.storage_model import ScanConfig
from storage_world import FIXTURE, World, make_world

from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def world(moodle: MoodleCLI, local_inventory: Inventory) -> Iterator[World]:
    w = make_world(uuid.uuid4().hex[:8])
    accounts = local_inventory.platform.accounts
    payload = {
        "action": "build",
        "type_field": accounts.account_type_field,
        "type_options": [*accounts.student_types, *accounts.hosted_types],
        "schools": [{"idnumber": s.category_idnumber, "cohort": s.cohort_idnumber, "name": f"Storage test {s.code}",
                     "years": ["Year 1", "Year 2"]} for s in w.schools],
        "files": [{"school": u.school, "where": u.where, "year": u.year, "course": u.course,
                   "filename": f"f{i}.txt", "content": u.content} for i, u in enumerate(w.uploads)],
        "recycle": {"school": 0, "year": 0, "course": f"t5{w.tag}-A1-doomed", "content": w.recycle_content},
        "users": w.users,
        "cases": w.cases,
    }
    try:
        w.built = moodle.tool(str(FIXTURE), payload=payload, timeout=600)
        yield w
    finally:
        moodle.tool(str(FIXTURE), payload={
            "action": "cleanup", "cohorts": [s.cohort_idnumber for s in w.schools],
            "users": [u["username"] for u in w.users],
            "categories": [s.category_idnumber for s in w.schools]}, timeout=600)


@pytest.fixture(scope="session")
def scan_config(local_inventory: Inventory, site: Site, world: World) -> ScanConfig:
    """The inventory's configuration with the test's two schools added to the real ones."""
    cfg, _ = config_from_inventory(local_inventory, site)
    return dataclasses.replace(cfg, schools=(*cfg.schools, *world.schools))
