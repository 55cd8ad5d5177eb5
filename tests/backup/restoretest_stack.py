"""A restore-rehearsal Moodle beside the main local stack (own base dir,
database, nginx vhost and port, no cron runner), installed from the current
pins: the only Moodle the backup tests ever wipe and restore. The main stack
(:8080, database `moodle`, /srv/moodle) is never touched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from beside_stack import SHARED, Beside, remove, write_inventory

from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site, site_of

STACK = Beside("restoretest", 8082)
DB = STACK.db


def remove_rehearsal() -> None:
    remove(STACK)


@dataclass
class Rehearsal:
    root: Path      # inventory root: platform.yml, schools.yml, moodle.yml, restoretest/
    env: Path

    def site(self) -> Site:
        return site_of(load_inventory(str(self.env)))

    def moodle(self) -> MoodleCLI:
        return MoodleCLI(self.site())


def build_inventory(root: Path, extra_vars: dict[str, object]) -> Rehearsal:
    return Rehearsal(root=root, env=write_inventory(STACK, root, SHARED, extra_vars))


def provision(r: Rehearsal) -> None:
    """Fresh rehearsal install; the caller holds provisioning_lock()."""
    remove_rehearsal()
    assert main(["--inventory", str(r.env), "platform", "up"]) == 0
