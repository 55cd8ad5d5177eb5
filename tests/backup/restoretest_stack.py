"""A restore-rehearsal Moodle beside the main local stack (own base dir,
database, nginx vhost and port, no cron runner), installed from the current
pins: the only Moodle the backup tests ever wipe and restore. The main stack
(:8080, database `moodle`, /srv/moodle) is never touched."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from moodleops import REPO_ROOT
from moodleops.cli import main
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site, site_of

SHARED = REPO_ROOT.parent / "shared" / "artifacts"
BASE = Path("/srv/moodle-restoretest")
DB = "moodle_restoretest"
VHOST = "moodle-restoretest"
PORT = 8082
STATE = Path("/var/lib/moodleops-restoretest")
BACKUPS = Path("/var/backups/moodleops-restoretest")


def psql(sql: str, db: str = "postgres") -> str:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", db, "-Atc", sql],
                          capture_output=True, text=True, check=True).stdout


def remove_rehearsal() -> None:
    # Exactly this rehearsal's objects: its database, directories and vhost.
    for db in psql(f"SELECT datname FROM pg_database WHERE datname = '{DB}'").split():
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    for path in (BASE, STATE, BACKUPS):
        shutil.rmtree(path, ignore_errors=True)
    for conf in (Path(f"/etc/nginx/sites-enabled/{VHOST}.conf"), Path(f"/etc/nginx/sites-available/{VHOST}.conf")):
        conf.unlink(missing_ok=True)
    subprocess.run(["service", "nginx", "reload"], capture_output=True, check=False)


@dataclass
class Rehearsal:
    root: Path      # inventory root: platform.yml, schools.yml, moodle.yml, restoretest/
    env: Path

    def site(self) -> Site:
        return site_of(load_inventory(str(self.env)))

    def moodle(self) -> MoodleCLI:
        return MoodleCLI(self.site())


def build_inventory(root: Path, extra_vars: dict[str, object]) -> Rehearsal:
    for name in ("platform.yml", "schools.yml", "moodle.yml"):
        shutil.copy(REPO_ROOT / "inventory" / name, root / name)
    env = root / "restoretest"
    (env / "group_vars").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "inventory/local/hosts.yml", env / "hosts.yml")
    gv = yaml.safe_load((REPO_ROOT / "inventory/local/group_vars/all.yml").read_text())
    gv.update({
        "moodle_base_dir": str(BASE), "moodle_db_name": DB, "nginx_vhost_name": VHOST,
        "nginx_listen_port": PORT, "moodle_wwwroot": f"http://127.0.0.1:{PORT}", "moodle_cron_runner": "none",
        "moodleops_state_dir": str(STATE), "moodle_backup_dir": str(BACKUPS),
        "moodle_pins_file": str(root / "moodle.yml"), "moodle_schools_file": str(root / "schools.yml"),
        "moodle_artifact_mirror": str(SHARED), "monitoring_enabled": False,
    })
    gv.update(extra_vars)
    (env / "group_vars/all.yml").write_text(yaml.safe_dump(gv))
    return Rehearsal(root=root, env=env)


def provision(r: Rehearsal) -> None:
    """Fresh rehearsal install; the caller holds provisioning_lock()."""
    remove_rehearsal()
    assert main(["--inventory", str(r.env), "platform", "up"]) == 0
