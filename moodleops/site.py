"""Where the platform lives: paths, URL, database coordinates and secrets of one
environment, taken from the validated inventory settings (the same values the
vars plugin gives the playbooks: moodleops.inventory.settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from moodleops.inventory import Inventory


class SiteError(RuntimeError):
    pass


@dataclass(frozen=True)
class Site:
    env: str
    wwwroot: str
    current_link: Path
    dataroot: Path
    php: str
    lib_dir: Path
    state_dir: Path
    web_user: str
    db_host: str
    db_port: int
    db_name: str
    db_prefix: str
    db_ro_user: str
    secrets_dir: Path | None

    @property
    def config_php(self) -> Path:
        return self.current_link / "config.php"

    def secret(self, name: str) -> str:
        """A secret by name (db_password, db_ro_password, admin_password):
        from MOODLEOPS_<NAME> in the environment, else from the inventory's
        generated secrets directory. Never from git."""
        env_name = "MOODLEOPS_" + name.upper()
        if os.environ.get(env_name):
            return os.environ[env_name]
        if self.secrets_dir is not None:
            path = self.secrets_dir / name
            if path.is_file():
                return path.read_text(encoding="utf-8").strip()
        where = f" or {self.secrets_dir}/{name}" if self.secrets_dir else ""
        raise SiteError(f"secret {name!r} not found: set {env_name}{where}")


def site_of(inv: Inventory) -> Site:
    v = inv.settings
    # Test stacks keep generated secrets on the machine (moodleops_local_secrets_dir);
    # production has none on disk: vault for Ansible, MOODLEOPS_<NAME> for Python.
    secrets_dir = os.environ.get("MOODLEOPS_SECRETS_DIR") or v.local_secrets_dir
    return Site(
        env=inv.env,
        wwwroot=v.wwwroot,
        current_link=v.current_link,
        dataroot=v.dataroot,
        php=f"/usr/bin/php{v.php_version}",
        lib_dir=v.lib_dir,
        state_dir=v.state_dir,
        web_user=v.web_user,
        db_host=v.db_host,
        db_port=v.db_port,
        db_name=v.db_name,
        db_prefix=v.db_prefix,
        db_ro_user=v.db_ro_user,
        secrets_dir=Path(secrets_dir) if secrets_dir else None,
    )
