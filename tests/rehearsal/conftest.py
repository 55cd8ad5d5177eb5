"""One provisioned rehearsal for every module of this package that needs the
platform (load balancer, multi-host roles, replica, demonstration 1): brought
up and played once by `moodleops -i rehearsal platform up` (site.yml, then the
health summary), with its second run, and brought down after the package's
last test, before the rest of the suite runs. Each module used to build its own
(four `up`, four first runs, four second runs: most of CI's rehearsal time)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from moodleops.loadtests.fixture import new_prefix
from older_release import both_mirrors, older_pins

from moodleops.platform.ansible import run_playbook

from .rehearsal_run import INV, PLATFORM_PLAY, Platform, lb1_certificate, moodleops, rehearsal_up


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_lifecycle brings its own rehearsal up and down, which would destroy
    the shared platform under the modules after it: within this package, the
    tests without `platform` run first (each group keeps its order)."""
    here = Path(__file__).parent
    slots = [n for n, item in enumerate(items) if here in Path(item.path).parents]
    # A module that leaves the platform damaged (RUNS_LAST: a web node lost) comes last.
    # The rolling upgrade (RUNS_FIRST) takes the platform from its older start point to the pins.
    ordered = sorted((items[n] for n in slots), key=lambda item: (
        "platform" in getattr(item, "fixturenames", ()), not _module_says(item, "RUNS_FIRST"),
        _module_says(item, "RUNS_LAST")))
    for n, item in zip(slots, ordered, strict=True):
        items[n] = item


def _module_says(item: pytest.Item, flag: str) -> bool:
    return bool(getattr(getattr(item, "module", None), flag, False))


def _start_point(session: pytest.Session, tmp: Path) -> dict[str, str]:
    """With the rolling upgrade among the tests, the platform is installed at
    the older releases (MOODLEOPS_PINS, and a mirror holding both sets)."""
    if not any(_module_says(item, "RUNS_FIRST") for item in session.items):
        return {}
    pins = tmp / "start.yml"
    pins.write_text(yaml.safe_dump(older_pins(yaml.safe_load((INV.root / "moodle.yml").read_text())),
                                   sort_keys=False), encoding="utf-8")
    (tmp / "mirror").mkdir()
    return {"MOODLEOPS_PINS": str(pins), "MOODLEOPS_ARTIFACTS": str(both_mirrors(tmp / "mirror"))}


@pytest.fixture(scope="package")
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    start = _start_point(request.session, tmp_path_factory.mktemp("start-point"))
    with rehearsal_up():
        up = moodleops("-i", INV.env, "platform", "up", env=start)
        assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
        second = run_playbook(INV, "site.yml", PLATFORM_PLAY, echo=False, env=start)
        yield Platform(second, lb1_certificate(tmp_path_factory), up.stdout, start)


@dataclass(frozen=True)
class LoadFixture:
    prefix: str
    directory: Path         # the operator's side's fixture records
    users: int              # the peak users it is sized for (exam shape, two workers)


@pytest.fixture(scope="package")
def load_fixture(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadFixture]:
    """A load-test fixture made through Moodle on web1 from the operator's side
    (`loadtest prepare` runs there over SSH and brings its record back), for
    the distributed runs (test_loadgen, test_node_loss); removed at the end."""
    fx = LoadFixture(new_prefix(), tmp_path_factory.mktemp("loadtest-fixtures"), 12)
    prep = moodleops("-i", INV.env, "loadtest", "prepare", "--prefix", fx.prefix, "--fixture-dir", str(fx.directory),
                     "--for-shape", "exam", "--users", str(fx.users), "--workers", "2", "--courses", "2",
                     "--questions", "3")
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert "on web1 over SSH" in prep.stdout, prep.stdout
    try:
        yield fx
    finally:
        clean = moodleops("-i", INV.env, "loadtest", "cleanup", "--prefix", fx.prefix, "--fixture-dir",
                          str(fx.directory), "--yes")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not (fx.directory / f"{fx.prefix}.json").exists()
