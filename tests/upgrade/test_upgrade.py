"""Real upgrades on a rehearsal Moodle installed beside the main local stack
(own directory, database and port; same PostgreSQL, php-fpm and nginx):
older 4.1.0 core and older plugins from ../shared/artifacts/older, then a
plugin upgrade, a core point upgrade with every plugin in place, a refused
downgrade, and a forced failure that must roll back. Tests run in order."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from beside_stack import SHARED, Beside, psql, remove, write_inventory

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.platform.provision import provisioning_lock
from moodleops.site import site_of
from moodleops.webclient import login

pytestmark = pytest.mark.stack

STACK = Beside("rehearsal", 8081)
BASE, DB, STATE = STACK.base, STACK.db, STACK.state
HERE = Path(__file__).resolve().parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Rehearsal:
    root: Path          # inventory root: platform.yml, schools.yml, moodle.yml, rehearsal/
    env: Path
    mirror: Path

    @property
    def pins_file(self) -> Path:
        return self.root / "moodle.yml"

    def pins(self) -> dict:
        return yaml.safe_load(self.pins_file.read_text())

    def set_pins(self, pins: dict) -> None:
        self.pins_file.write_text(yaml.safe_dump(pins, sort_keys=False))

    def set_plugin(self, pins: dict, component: str, archive: Path, version: str) -> None:
        for pin in pins["plugins"]:
            if pin["component"] == component:
                pin.update(file=archive.name, sha256=_sha(archive), version=version)

    def moodle(self) -> MoodleCLI:
        return MoodleCLI(site_of(load_inventory(str(self.env))))

    def data(self, mode: str) -> dict:
        return self.moodle().tool(str(HERE / "site_data.php"), payload={"mode": mode, "tag": "rehearsal"})

    def upgrade(self) -> int:
        return main(["--inventory", str(self.env), "platform", "upgrade", "--apply", "--operator", "pytest"])

    def runs(self) -> list[dict]:
        log = STATE / "upgrades.jsonl"
        return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory, provisioned: object) -> Iterator[Rehearsal]:
    root = tmp_path_factory.mktemp("rehearsal-inventory")
    mirror = tmp_path_factory.mktemp("rehearsal-mirror")
    for src in [*SHARED.glob("*.zip"), *SHARED.glob("*.tgz"), *(SHARED / "older").glob("*.zip"),
                *(SHARED / "older").glob("*.tgz")]:
        (mirror / src.name).symlink_to(src)
    env = write_inventory(STACK, root, mirror)
    r = Rehearsal(root=root, env=env, mirror=mirror)

    # Start point: Moodle 4.1.0 with the older plugin releases where there are some.
    pins = r.pins()
    core = SHARED / "older/moodle-4.1.0.tgz"
    pins["core"].update(version="2022112800.00", release="4.1 (Build: 20221128)", file=core.name, sha256=_sha(core))
    r.set_plugin(pins, "mod_hotpot", SHARED / "older/mod_hotpot-2024021051.zip", "2024021051")
    r.set_plugin(pins, "format_onetopic", SHARED / "older/format_onetopic-4.1.10.zip", "2022081610")
    r.set_plugin(pins, "block_completion_progress", SHARED / "older/block_completion_progress-2023110100.zip",
                 "2023110100")
    r.set_pins(pins)

    mp = pytest.MonkeyPatch()
    mp.setenv("MOODLEOPS_ARTIFACTS", str(mirror))
    # Serialised with any other provisioning of this machine (shared nginx/PostgreSQL).
    with provisioning_lock():
        remove(STACK)
        assert main(["--inventory", str(env), "platform", "up"]) == 0
    r.data("create")
    yield r
    mp.undo()
    with provisioning_lock():
        remove(STACK)


def _installed(r: Rehearsal, component: str) -> Decimal:
    probe = r.moodle().probe()
    return Decimal(probe["version"] if component == "core" else probe["plugins"][component]["db"])


def _has_table(table: str) -> bool:
    return psql(f"SELECT to_regclass('{table}') IS NOT NULL", db=DB).strip() == "t"


def test_1_plugin_upgrade_runs_its_database_steps_and_keeps_data(rehearsal: Rehearsal) -> None:
    before = rehearsal.data("read")
    assert _installed(rehearsal, "block_completion_progress") == Decimal(2023110100)
    assert not _has_table("mdl_block_completion_progress")
    pins = rehearsal.pins()
    rehearsal.set_plugin(pins, "block_completion_progress", SHARED / "block_completion_progress-2025101300.zip",
                         "2025101300")
    rehearsal.set_pins(pins)
    assert rehearsal.upgrade() == 0
    assert _installed(rehearsal, "block_completion_progress") == Decimal(2025101300)
    # The 2025090200 upgrade step created this table: the plugin's DB upgrade really ran.
    assert _has_table("mdl_block_completion_progress")
    assert rehearsal.data("read") == before
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "success" and run["operator"] == "pytest"
    assert run["changes"] == [{"component": "block_completion_progress", "from": "2023110100", "to": "2025101300"}]
    print(f"plugin upgrade: maintenance {run['maintenance_s']} s, whole run {run['duration_s']} s")


def test_2_core_point_upgrade_with_all_plugins(rehearsal: Rehearsal) -> None:
    before = rehearsal.data("read")
    rehearsal.set_pins(yaml.safe_load((REPO_ROOT / "inventory/moodle.yml").read_text()))
    assert rehearsal.upgrade() == 0
    inv = load_inventory(str(rehearsal.env))
    assert _installed(rehearsal, "core") == inv.core.version
    for pin in inv.plugins:
        assert _installed(rehearsal, pin.component) == pin.version, pin.component
    after = rehearsal.data("read")
    assert {k: after[k] for k in ("course", "user", "file_sha1")} == \
        {k: before[k] for k in ("course", "user", "file_sha1")}
    site = site_of(inv)
    assert login(site.wwwroot, "admin", site.secret("admin_password")).is_logged_in()
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "success"
    print(f"core upgrade: maintenance {run['maintenance_s']} s, whole run {run['duration_s']} s")


def test_3_downgrade_is_refused_before_anything_changes(rehearsal: Rehearsal,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    link_before = os.readlink(BASE / "current")
    runs_before = len(rehearsal.runs())
    pins = rehearsal.pins()
    rehearsal.set_plugin(pins, "format_onetopic", SHARED / "older/format_onetopic-4.1.10.zip", "2022081610")
    rehearsal.set_pins(pins)
    assert rehearsal.upgrade() == 1
    assert "Downgrade refused, nothing was changed: format_onetopic: installed 2022081612" in capsys.readouterr().out
    assert os.readlink(BASE / "current") == link_before
    assert not (BASE / "moodledata/climaintenance.html").exists()
    assert len(rehearsal.runs()) == runs_before


def _broken_bulkenrol(mirror: Path) -> Path:
    """local_bulkenrol with a higher version whose upgrade step throws."""
    src = SHARED / "local_bulkenrol-v4.1-r4.zip"
    out = mirror / "local_bulkenrol-broken.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "bulkenrol/version.php":
                data = data.replace(b"2023010503", b"2023010599")
            if item.filename != "bulkenrol/db/upgrade.php":
                zout.writestr(item, data)
        zout.writestr("bulkenrol/db/upgrade.php",
                      "<?php\nfunction xmldb_local_bulkenrol_upgrade($oldversion) {\n"
                      "    throw new coding_exception('moodleops rehearsal: this upgrade step fails on purpose');\n}\n")
    return out


def test_4_failed_upgrade_rolls_back_to_the_previous_version_with_data_intact(rehearsal: Rehearsal) -> None:
    before = rehearsal.data("read")
    link_before = os.readlink(BASE / "current")
    pins = yaml.safe_load((REPO_ROOT / "inventory/moodle.yml").read_text())
    rehearsal.set_plugin(pins, "local_bulkenrol", _broken_bulkenrol(rehearsal.mirror), "2023010599")
    rehearsal.set_pins(pins)
    assert rehearsal.upgrade() == 1
    assert os.readlink(BASE / "current") == link_before
    assert _installed(rehearsal, "local_bulkenrol") == Decimal(2023010503)
    assert rehearsal.data("read") == before
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "rolled-back" and "Run Moodle's upgrade" in run["error"]
    assert (BASE / "moodledata/climaintenance.html").exists()       # left ON for a human
    assert main(["--inventory", str(rehearsal.env), "platform", "maintenance", "off"]) == 0
    site = site_of(load_inventory(str(rehearsal.env)))
    assert login(site.wwwroot, "admin", site.secret("admin_password")).is_logged_in()
