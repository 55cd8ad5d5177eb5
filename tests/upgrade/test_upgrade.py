"""Real upgrades on a rehearsal Moodle installed beside the main local stack
(own directory, database and port; same PostgreSQL, php-fpm and nginx):
older 4.1.0 core and older plugins from ../shared/artifacts/older, then a
plugin upgrade, a core point upgrade with every plugin in place, a refused
downgrade, a plugin step that changes a table and data then fails (rolled
back), an upgrade killed during its plugin step (recovered from its intent
record), a cron pause that times out (site given back), and a rollback whose
restore finds no room (live database kept, said so). Tests run in order."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import yaml
from beside_stack import SHARED, Beside, psql, remove, write_inventory
from older_release import both_mirrors, older_pins

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.platform.lock import platform_lock
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

    def upgrade(self, *extra: str) -> int:
        return main(["--inventory", str(self.env), "platform", "upgrade", "--apply", "--operator", "pytest", *extra])

    def set_vars(self, **values: object) -> None:
        gv_file = self.env / "group_vars/all.yml"
        gv = yaml.safe_load(gv_file.read_text())
        gv.update(values)
        gv_file.write_text(yaml.safe_dump(gv))

    def runs(self) -> list[dict]:
        log = STATE / "upgrades.jsonl"
        return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory, provisioned: object) -> Iterator[Rehearsal]:
    root = tmp_path_factory.mktemp("rehearsal-inventory")
    mirror = both_mirrors(tmp_path_factory.mktemp("rehearsal-mirror"))
    env = write_inventory(STACK, root, mirror)
    r = Rehearsal(root=root, env=env, mirror=mirror)
    # Start point: Moodle 4.1.0 with the older plugin releases where there are some.
    r.set_pins(older_pins(r.pins()))

    mp = pytest.MonkeyPatch()
    mp.setenv("MOODLEOPS_ARTIFACTS", str(mirror))
    # Serialised with any other provisioning of this machine (shared nginx/PostgreSQL).
    with provisioning_lock():
        remove(STACK)
        _remove_small_tablespace()
        assert main(["--inventory", str(env), "platform", "up"]) == 0
    r.data("create")
    yield r
    mp.undo()
    with provisioning_lock():
        remove(STACK)
        _remove_small_tablespace()


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


def test_3b_a_second_upgrade_is_refused_while_one_holds_the_platform_lock(
        rehearsal: Rehearsal, capsys: pytest.CaptureFixture[str]) -> None:
    """Two upgrades started at once: the second finds the platform lock taken
    (as the first holds it for its whole run) and stops before the playbook."""
    link_before = os.readlink(BASE / "current")
    runs_before = len(rehearsal.runs())
    site = site_of(load_inventory(str(rehearsal.env)))
    capsys.readouterr()
    with platform_lock(site, "platform upgrade (the first one)"):
        assert rehearsal.upgrade() == 1
    err = capsys.readouterr().err
    assert "platform lock is held" in err and "the first one" in err
    assert os.readlink(BASE / "current") == link_before and len(rehearsal.runs()) == runs_before
    assert not (BASE / "moodledata/climaintenance.html").exists()


SMALL_TS = "moodle_rehearsal_small"
SMALL_DIR = Path("/var/lib/moodleops-rehearsal-small-ts")


def _remove_small_tablespace() -> None:
    """The no-room test's tablespace (a small tmpfs): dropped once no database uses it."""
    if psql(f"SELECT 1 FROM pg_tablespace WHERE spcname = '{SMALL_TS}'").strip():
        psql(f"DROP TABLESPACE {SMALL_TS}")
    if subprocess.run(["mountpoint", "-q", str(SMALL_DIR)], check=False).returncode == 0:
        subprocess.run(["umount", str(SMALL_DIR)], check=True)
    if SMALL_DIR.exists():
        SMALL_DIR.rmdir()


BROKEN_VERSION = "2023010599"
# A plugin upgrade step that changes a core table's schema and a course's data
# through Moodle's own DDL/DML API, then throws: what a buggy add-on does.
CHANGES_THEN_FAILS = """<?php
function xmldb_local_bulkenrol_upgrade($oldversion) {
    global $DB;
    $DB->get_manager()->add_field(new xmldb_table('course'),
        new xmldb_field('moodleopsbroken', XMLDB_TYPE_INTEGER, '10', null, null, null, '0'));
    $DB->set_field('course', 'fullname', 'changed by a failing upgrade', ['shortname' => 'upg-rehearsal']);
    throw new coding_exception('moodleops rehearsal: this upgrade step fails on purpose');
}
"""
# A step that fills its database's disk, then throws: the rollback's restore finds no room.
FILLS_DISK_THEN_FAILS = """<?php
function xmldb_local_bulkenrol_upgrade($oldversion) {
    global $DB;
    $table = new xmldb_table('local_bulkenrol_filler');
    $table->add_field('id', XMLDB_TYPE_INTEGER, '10', null, XMLDB_NOTNULL, XMLDB_SEQUENCE);
    $table->add_field('data', XMLDB_TYPE_TEXT);
    $table->add_key('primary', XMLDB_KEY_PRIMARY, ['id']);
    $DB->get_manager()->create_table($table);
    try {
        for ($i = 0; $i < 4000; $i++) {
            $DB->insert_record('local_bulkenrol_filler', ['data' => bin2hex(random_bytes(256 * 1024))]);
        }
    } catch (dml_exception $e) {
        throw new coding_exception('moodleops rehearsal: disk full, as intended: ' . $e->getMessage());
    }
    throw new coding_exception('moodleops rehearsal: the disk never filled');
}
"""


def _broken_bulkenrol(mirror: Path, upgrade_php: str, name: str) -> Path:
    """local_bulkenrol with a higher version whose upgrade step is `upgrade_php`."""
    src = SHARED / "local_bulkenrol-v4.1-r4.zip"
    out = mirror / f"local_bulkenrol-{name}.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "bulkenrol/version.php":
                data = data.replace(b"2023010503", BROKEN_VERSION.encode())
            if item.filename != "bulkenrol/db/upgrade.php":
                zout.writestr(item, data)
        zout.writestr("bulkenrol/db/upgrade.php", upgrade_php)
    return out


def _pin_broken(r: Rehearsal, upgrade_php: str, name: str) -> None:
    pins = yaml.safe_load((REPO_ROOT / "inventory/moodle.yml").read_text())
    r.set_plugin(pins, "local_bulkenrol", _broken_bulkenrol(r.mirror, upgrade_php, name), BROKEN_VERSION)
    r.set_pins(pins)


def _has_column(table: str, column: str) -> bool:
    return psql(f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' "
                f"AND column_name = '{column}'", db=DB).strip() == "1"


def test_4_failed_upgrade_rolls_back_schema_and_data(rehearsal: Rehearsal,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = rehearsal.data("read")
    link_before = os.readlink(BASE / "current")
    _pin_broken(rehearsal, CHANGES_THEN_FAILS, "changes-then-fails")
    capsys.readouterr()
    assert rehearsal.upgrade() == 1
    out = capsys.readouterr().out
    assert "ROLLED BACK." in out and "MAINTENANCE IS STILL ON" in out, out[-3000:]
    assert os.readlink(BASE / "current") == link_before
    assert _installed(rehearsal, "local_bulkenrol") == Decimal(2023010503)
    # The step's schema change and data change are both gone: the restored database is the dump.
    assert not _has_column("mdl_course", "moodleopsbroken")
    assert rehearsal.data("read") == before
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "rolled-back" and "Run Moodle's upgrade" in run["error"]
    assert run["rollback"]["database"] == "restored" and run["rollback"]["nodes_on_new_code"] == []
    assert set(run["moodledata"]) == {"before", "after"} and run["moodledata"]["before"]["filedir_files"] > 0
    # The failed database is kept aside, renamed; no half-restored copy is left.
    dbs = psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DB}\\_%'").split()
    assert f"{DB}_failed_{run['run'].lower()}" in dbs and not [d for d in dbs if "_restore_" in d]
    assert (BASE / "moodledata/climaintenance.html").exists()       # left ON for a human
    assert not rehearsal.moodle().probe()["cron_enabled"]             # trashdir kept until the old release serves
    assert main(["--inventory", str(rehearsal.env), "platform", "maintenance", "off"]) == 0
    site = site_of(load_inventory(str(rehearsal.env)))
    assert login(site.wwwroot, "admin", site.secret("admin_password")).is_logged_in()


# A plugin upgrade step that changes a core table's schema and a course's
# data, then takes its time: the upgrade is killed while it runs.
CHANGES_SLOWLY = """<?php
function xmldb_local_bulkenrol_upgrade($oldversion) {
    global $DB;
    $DB->get_manager()->add_field(new xmldb_table('course'),
        new xmldb_field('moodleopsslow', XMLDB_TYPE_INTEGER, '10', null, null, null, '0'));
    $DB->set_field('course', 'fullname', 'changed by a killed upgrade', ['shortname' => 'upg-rehearsal']);
    sleep(45);
    upgrade_plugin_savepoint(true, """ + BROKEN_VERSION + """, 'local', 'bulkenrol');
    return true;
}
"""
INTENT = STATE / "upgrade-intent.json"


def _running(pattern: str) -> list[str]:
    got = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True, check=False)
    return got.stdout.splitlines()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _until(what: str, ok: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():       # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.5)


def test_4b_killed_upgrade_is_refused_then_recovered_exactly(rehearsal: Rehearsal,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's process killed (SIGKILL) while Moodle's upgrade step runs,
    after the code switch: the play dies with it (none runs on without the
    lock), the intent record stays, no run-log line; the next upgrade is
    refused; the recovery refuses while the orphaned upgrade.php still runs,
    then rolls back: previous code, the dump's schema and data, maintenance on."""
    before = rehearsal.data("read")
    link_before = os.readlink(BASE / "current")
    runs_before = len(rehearsal.runs())
    _pin_broken(rehearsal, CHANGES_SLOWLY, "changes-slowly")
    cli = subprocess.Popen([sys.executable, "-m", "moodleops.cli", "--inventory", str(rehearsal.env), "platform",
                            "upgrade", "--apply", "--operator", "pytest"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _until("the plugin step's schema change",
               lambda: cli.poll() is not None or _has_column("mdl_course", "moodleopsslow"), 600)
        assert cli.poll() is None, f"the upgrade ended (exit {cli.returncode}) before its slow step"
        play = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(cli.pid)], capture_output=True,
                                                   text=True, check=False).stdout.split()]
        assert len(play) == 1, play
        cli.send_signal(signal.SIGKILL)        # the CLI only, as the OOM killer or `kill -9` would
        cli.wait(timeout=30)
        # ansible-playbook itself (what starts the next task) dies with it; its
        # worker waits for the task under way, upgrade.php, which runs on.
        _until("ansible-playbook dies with the CLI", lambda: not _alive(play[0]), 20)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    intent = json.loads(INTENT.read_text())
    assert intent["phase"] == "switch" and intent["run"]["from_release"] == link_before
    assert len(rehearsal.runs()) == runs_before
    assert (BASE / "moodledata/climaintenance.html").exists() and os.readlink(BASE / "current") != link_before

    capsys.readouterr()
    assert main(["--inventory", str(rehearsal.env), "platform", "status"]) == 1
    assert f"upgrade run {intent['run']['id']} (by pytest" in capsys.readouterr().out
    assert rehearsal.upgrade() == 1
    out = capsys.readouterr().out
    assert f"UPGRADE REFUSED, nothing was changed: run {intent['run']['id']}" in out and "--recover" in out, out[-2000:]

    upgrade_php = f"{BASE}/current/admin/cli/upgrade.php"
    assert _running(upgrade_php), "the killed play's upgrade.php ended already: the refusal below is not tested"
    assert rehearsal.upgrade("--recover") == 1
    out = capsys.readouterr().out
    assert "UPGRADE RECOVERY REFUSED, nothing was changed: Moodle's upgrade.php" in out, out[-2000:]
    _until("the orphaned upgrade.php ends", lambda: not _running(upgrade_php), 180)

    assert main(["--inventory", str(rehearsal.env), "platform", "upgrade", "--recover"]) == 0
    out = capsys.readouterr().out
    assert "interrupted after the code switch: roll back" in " ".join(out.split()) and INTENT.exists(), out[-2000:]
    assert rehearsal.upgrade("--recover") == 0
    out = capsys.readouterr().out
    assert "ROLLED BACK." in out and "MAINTENANCE IS STILL ON" in out, out[-3000:]
    assert not INTENT.exists()
    assert os.readlink(BASE / "current") == link_before
    assert _installed(rehearsal, "local_bulkenrol") == Decimal(2023010503)
    assert not _has_column("mdl_course", "moodleopsslow")
    assert rehearsal.data("read") == before
    run = rehearsal.runs()[-1]
    assert len(rehearsal.runs()) == runs_before + 1 and run["run"] == intent["run"]["id"]
    assert run["outcome"] == "rolled-back" and run["recovered_by"] == "pytest"
    assert "interrupted after the code switch" in run["error"] and run["rollback"]["database"] == "restored"
    assert rehearsal.upgrade("--recover") == 0
    assert "no interrupted upgrade on record" in capsys.readouterr().out
    assert main(["--inventory", str(rehearsal.env), "platform", "maintenance", "off"]) == 0
    site = site_of(load_inventory(str(rehearsal.env)))
    assert login(site.wwwroot, "admin", site.secret("admin_password")).is_logged_in()


def test_5_cron_still_busy_gives_the_site_back(rehearsal: Rehearsal, capsys: pytest.CaptureFixture[str]) -> None:
    """With a 1-minute announcement and a message: when maintenance starts users
    see that message; the cron pause then times out on a task still running, and
    the run gives everything back (cron on, its maintenance lifted, message restored)."""
    link_before = os.readlink(BASE / "current")
    before = rehearsal.moodle().probe()
    assert before["cron_enabled"] and not before["maintenance_cli"]
    _pin_broken(rehearsal, CHANGES_THEN_FAILS, "changes-then-fails")
    rehearsal.set_vars(moodle_upgrade_cron_wait=5)
    site = site_of(load_inventory(str(rehearsal.env)))
    message = f"Mise a jour {os.getpid()} en cours"
    busy = subprocess.Popen(["runuser", "-u", site.web_user, "--", site.php, str(HERE / "busy_task.php"),
                             str(site.config_php)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:      # what a user's browser gets, once a second
        while not stop.wait(1):
            try:
                page = requests.get(f"{site.wwwroot}/", timeout=5)
            except requests.RequestException:
                continue
            if page.status_code == 503:
                seen.append(page.text)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "running"
        watcher.start()
        capsys.readouterr()
        assert rehearsal.upgrade("--delay", "1", "--message", message) == 1
    finally:
        stop.set()
        watcher.join(timeout=10)
        assert busy.stdin is not None
        busy.stdin.close()          # the task finishes through Moodle's API
        busy.wait(timeout=60)
        rehearsal.set_vars(moodle_upgrade_cron_wait=600)
    out = capsys.readouterr().out
    assert "NOTHING WAS UPGRADED" in out and "cron tasks still running after 5 s" in out, out[-3000:]
    assert "Cron: re-enabled" in out and "Maintenance: off" in out
    assert seen and all(message in page for page in seen), seen[:1]
    after = rehearsal.moodle().probe()
    assert after["cron_enabled"] and not after["maintenance_cli"] and not after["maintenance_enabled"]
    assert after["maintenance_later"] is None
    assert after["maintenance_message"] == before["maintenance_message"]
    assert os.readlink(BASE / "current") == link_before
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "failed-before-change" and "still running" in run["error"]
    assert run["dump"] is None
    assert busy.returncode == 0 and busy.stdout is not None and busy.stdout.read().strip() == "done"


def test_6_restore_without_room_keeps_the_live_database_and_says_so(
        rehearsal: Rehearsal, capsys: pytest.CaptureFixture[str]) -> None:
    """The rehearsal database moved to a small tablespace (a tmpfs) with room
    for the pre-flight's margin; the failing step fills it, so the rollback
    cannot restore: the live database must be kept, nothing dropped, and the
    message must say exactly that. Last test: it leaves the rehearsal broken."""
    db_bytes = int(psql(f"SELECT pg_database_size('{DB}')"))
    SMALL_DIR.mkdir(exist_ok=True)
    size_mb = db_bytes * 3 // (1024 * 1024) + 16
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(SMALL_DIR)], check=True)
    subprocess.run(["chown", "postgres:postgres", str(SMALL_DIR)], check=True)
    psql(f"CREATE TABLESPACE {SMALL_TS} LOCATION '{SMALL_DIR}'")
    psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}'")
    psql(f'ALTER DATABASE "{DB}" SET TABLESPACE {SMALL_TS}')
    oid = psql(f"SELECT oid FROM pg_database WHERE datname = '{DB}'").strip()
    _pin_broken(rehearsal, FILLS_DISK_THEN_FAILS, "fills-disk")
    capsys.readouterr()
    assert rehearsal.upgrade() == 1
    out = capsys.readouterr().out
    assert "ROLLBACK INCOMPLETE." in out and "Database: NOT restored" in out, out[-3000:]
    assert "nothing was dropped" in out and "MAINTENANCE IS STILL ON" in out
    # The platform still needs the rollback: the intent record stays for `--recover` once there is room.
    assert INTENT.exists() and "moodleops platform upgrade --recover --apply" in " ".join(out.split())
    # The live database is the same one (same oid), and the partial copy is gone.
    assert psql(f"SELECT oid FROM pg_database WHERE datname = '{DB}'").strip() == oid
    assert not psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{DB}\\_restore\\_%'").split()
    assert psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{DB}'").strip() == "t"
    run = rehearsal.runs()[-1]
    assert run["outcome"] == "rollback-incomplete" and run["rollback"]["database"] == "failed"
    assert run["rollback"]["database_error"]
    assert (BASE / "moodledata/climaintenance.html").exists()
    assert Path(run["dump"]).is_file()            # the pre-upgrade dump is kept for the manual restore
