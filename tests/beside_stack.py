"""A second Moodle installed beside the main local stack on the same host, for
tests that must change a whole site (upgrades, restores) without touching the
main one (:8080, database `moodle`, /srv/moodle): own base dir, database,
nginx vhost and port; no cron runner and no monitoring of its own. Built from
a temporary copy of the local inventory and removed by the tests that make it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from moodleops import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared" / "artifacts"


@dataclass(frozen=True)
class Beside:
    name: str       # rehearsal, restoretest, ...: every path and name derives from it
    port: int

    @property
    def base(self) -> Path:
        return Path(f"/srv/moodle-{self.name}")

    @property
    def db(self) -> str:
        return f"moodle_{self.name}"

    @property
    def vhost(self) -> str:
        return f"moodle-{self.name}"

    @property
    def state(self) -> Path:
        return Path(f"/var/lib/moodleops-{self.name}")

    @property
    def backups(self) -> Path:
        return Path(f"/var/backups/moodleops-{self.name}")


def psql(sql: str, db: str = "postgres") -> str:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", db, "-Atc", sql],
                          capture_output=True, text=True, check=True).stdout


def remove(b: Beside) -> None:
    """Exactly this instance's objects: its database (and the copies a rolled-back
    upgrade keeps as <db>_failed_<run>, or a killed rollback left as <db>_restore_<run>),
    directories and vhost."""
    for db in psql(f"SELECT datname FROM pg_database WHERE datname = '{b.db}' "
                   f"OR datname LIKE '{b.db}\\_failed\\_%' OR datname LIKE '{b.db}\\_restore\\_%'").split():
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    for path in (b.base, b.state, b.backups):
        shutil.rmtree(path, ignore_errors=True)
    for conf in (Path(f"/etc/nginx/sites-enabled/{b.vhost}.conf"), Path(f"/etc/nginx/sites-available/{b.vhost}.conf")):
        conf.unlink(missing_ok=True)
    subprocess.run(["service", "nginx", "reload"], capture_output=True, check=False)


def write_inventory(b: Beside, root: Path, mirror: Path, extra_vars: dict[str, object] | None = None) -> Path:
    """root/*.yml (copies of the shared inventory files, the test may edit them)
    and the environment root/<name>/; returns the environment directory."""
    for name in ("platform.yml", "schools.yml", "moodle.yml", "capacity.yml", "loadmodel.yml"):
        shutil.copy(REPO_ROOT / "inventory" / name, root / name)
    env = root / b.name
    (env / "group_vars").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "inventory/local/hosts.yml", env / "hosts.yml")
    gv = yaml.safe_load((REPO_ROOT / "inventory/local/group_vars/all.yml").read_text())
    gv.update({
        "moodle_base_dir": str(b.base), "moodle_db_name": b.db, "nginx_vhost_name": b.vhost,
        "nginx_listen_port": b.port, "moodle_wwwroot": f"http://127.0.0.1:{b.port}", "moodle_cron_runner": "none",
        "moodleops_state_dir": str(b.state), "moodle_backup_dir": str(b.backups),
        "moodle_artifact_mirror": str(mirror), "monitoring_enabled": False,
        **(extra_vars or {}),
    })
    (env / "group_vars/all.yml").write_text(yaml.safe_dump(gv))
    return env
