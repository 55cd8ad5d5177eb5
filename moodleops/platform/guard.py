"""What a platform-wide operation (upgrade, restore, `maintenance off`) checks
first: no incident runbook holds the platform in maintenance, and nobody else
holds the platform lock (moodleops/platform/lock.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moodleops.incident.journal import Journal
from moodleops.incident.runbook import INCIDENTS_SUBDIR
from moodleops.platform.lock import platform_lock
from moodleops.site import Site


class PlatformHeld(RuntimeError):
    """A platform incident is open: the operation is refused."""


def platform_incidents(site: Site, env: str) -> list[str]:
    """Incidents that hold the platform in maintenance, or were interrupted while changing it."""
    journal = Journal(site.state_dir / INCIDENTS_SUBDIR, None, env)
    incidents = journal.incidents()
    held = {i for i, _ in journal.holds(incidents).of(("platform_maintenance", 0))}
    held |= {i.id for i in incidents.values()
             if not i.complete and any(e.get("kind") == "platform_maintenance" for e in i.entries)}
    return sorted(held)


@contextmanager
def platform_operation(site: Site, env: str, what: str, *, refuse_if_held: bool = True) -> Iterator[Any]:
    """Hold the platform lock for the body (PlatformLockBusy / PlatformLockError
    when it cannot be had) and, unless refuse_if_held is False, refuse
    (PlatformHeld) while a platform incident is open."""
    with platform_lock(site, what) as conn:
        held = platform_incidents(site, env) if refuse_if_held else []
        if held:
            raise PlatformHeld(f"{what} refused: platform incident {', '.join(held)} holds the platform in "
                               f"maintenance; reinstate it first (`moodleops incident reinstate {held[0]}`, "
                               "or `moodleops incident recover` if it was interrupted)")
        yield conn
