"""One provisioned rehearsal for every module of this package that needs the
platform (load balancer, multi-host roles, replica, demonstration 1): brought
up and played once by `moodleops -i rehearsal platform up` (site.yml, then the
health summary), with its second run, and brought down after the package's
last test, before the rest of the suite runs. Each module used to build its own
(four `up`, four first runs, four second runs: most of CI's rehearsal time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moodleops.platform.ansible import run_playbook

from .rehearsal_run import INV, PLATFORM_PLAY, Platform, lb1_certificate, moodleops, rehearsal_up


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_lifecycle brings its own rehearsal up and down, which would destroy
    the shared platform under the modules after it: within this package, the
    tests without `platform` run first (each group keeps its order)."""
    here = Path(__file__).parent
    slots = [n for n, item in enumerate(items) if here in Path(item.path).parents]
    ordered = sorted((items[n] for n in slots), key=lambda item: "platform" in getattr(item, "fixturenames", ()))
    for n, item in zip(slots, ordered, strict=True):
        items[n] = item


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with rehearsal_up():
        up = moodleops("-i", INV.env, "platform", "up")
        assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
        second = run_playbook(INV, "site.yml", PLATFORM_PLAY, echo=False)
        yield Platform(second, lb1_certificate(tmp_path_factory), up.stdout)
