"""Shared fixtures. Tests marked `stack` run against the real local platform
(PostgreSQL, php-fpm, nginx, Moodle on 127.0.0.1), provisioned by this same
code through `ensure_provisioned` before the first of them runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moodleops import REPO_ROOT
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


# The rehearsal's base container (debootstrap and the stack's packages: minutes
# on a new machine) is built in the background while the tests before it run;
# the rehearsal's first `up` waits for it (one rehearsal command at a time).
_PREPARE = pytest.StashKey[subprocess.Popen[bytes]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    from moodleops.rehearsal import lxc
    from moodleops.rehearsal.spec import load_rehearsal

    containers = any({"platform", "rehearsal"} & set(getattr(i, "fixturenames", ())) for i in session.items)
    if not containers or session.config.option.collectonly or lxc.missing_tools():
        return   # nothing needs it, or the rehearsal's tests say what is missing
    logs = load_rehearsal(load_inventory("rehearsal")).state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "prepare-in-background.log", "wb") as log:
        session.config.stash[_PREPARE] = subprocess.Popen(
            [sys.executable, "-m", "moodleops.cli", "rehearsal", "prepare"], cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    proc = session.config.stash.get(_PREPARE, None)
    if proc is not None and proc.poll() is None:
        proc.terminate()   # a run stopped early (-x): the base is rebuilt next time if half-made
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
