"""Where the platform lives: paths, URL, database coordinates and secrets of one
environment, taken from the validated inventory settings (the same values the
vars plugin gives the playbooks: moodleops.inventory.settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from moodleops.errors import UsageError
from moodleops.inventory import Host, Inventory
from moodleops.inventory.addresses import is_this_machine


class SiteError(RuntimeError):
    pass


class NotOnThisMachine(UsageError):
    """The command acts on the Moodle installed here, and this machine is not
    a web node of the inventory given: nothing changed."""


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
    db_read_host: str       # the replica, for measurements (moodle_db_read_host)
    db_port: int
    db_name: str
    db_prefix: str
    db_ro_user: str
    secrets_dir: Path | None
    # The inventory's web nodes: Moodle's CLI acts on the Moodle installed
    # here, so for any other environment it must refuse, not act on the wrong site.
    web_hosts: tuple[Host, ...]

    @property
    def config_php(self) -> Path:
        return self.current_link / "config.php"

    @property
    def web_nodes(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.web_hosts)

    @cached_property
    def moodle_here(self) -> bool:
        # Lazy: it may resolve names, and most commands never ask.
        return not self.web_hosts or any(is_this_machine(h.name, h.address, h.connection)
                                         for h in self.web_hosts)

    def require_here(self) -> None:
        """Refuse before acting: Moodle's CLI here belongs to another site."""
        if not self.moodle_here:
            raise NotOnThisMachine(
                f"inventory '{self.env}': Moodle is not on this machine (its web nodes: "
                f"{', '.join(self.web_nodes)}); run this on one of them, or through the pyinfra deploy "
                f"(playbooks/deploys/incident.py for incidents)")

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
        db_read_host=v.db_read_host,
        db_port=v.db_port,
        db_name=v.db_name,
        db_prefix=v.db_prefix,
        db_ro_user=v.db_ro_user,
        secrets_dir=Path(secrets_dir) if secrets_dir else None,
        web_hosts=inv.group("web"),
    )
