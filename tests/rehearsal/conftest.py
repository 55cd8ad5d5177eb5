"""One provisioned rehearsal for every module of this package that needs the
platform (load balancer, multi-host roles, replica, demonstration 1): brought
up and played once, with its second run, and brought down after the package's
last test, before the rest of the suite runs. Each module used to build its own
(four `up`, four first runs, four second runs: most of CI's rehearsal time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moodleops.platform.ansible import run_playbook

from .rehearsal_run import INV, PLATFORM_PLAY, Platform, lb1_certificate, play, rehearsal_up


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with rehearsal_up():
        play(PLATFORM_PLAY, tail=80)
        second = run_playbook(INV, "site.yml", PLATFORM_PLAY, echo=False)
        yield Platform(second, lb1_certificate(tmp_path_factory))
