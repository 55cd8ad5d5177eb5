"""Where the platform lives, as the playbooks laid it out: paths, URLs, database
coordinates and secrets, resolved from the same variables Ansible uses
(role defaults of `platform_defaults`, overridden by the inventory's group_vars)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory

DEFAULTS_FILE = REPO_ROOT / "playbooks" / "roles" / "platform_defaults" / "defaults" / "main.yml"
_SIMPLE_REF = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class SiteError(RuntimeError):
    pass


def platform_vars(inv: Inventory) -> dict[str, Any]:
    """Role defaults overlaid with the inventory's group_vars, with plain
    `{{ name }}` references resolved. Values needing Ansible lookups or filters
    stay as written: Python never needs them (secrets are read by `Site.secret`)."""
    with open(DEFAULTS_FILE, encoding="utf-8") as fh:
        merged: dict[str, Any] = dict(yaml.safe_load(fh) or {})
    merged.update(inv.vars)
    for _ in range(5):  # references nest a few levels deep at most
        changed = False
        for key, value in merged.items():
            if isinstance(value, str) and _SIMPLE_REF.search(value):
                def sub(m: re.Match[str]) -> str:
                    ref = merged.get(m.group(1))
                    return str(ref) if isinstance(ref, (str, int)) and "{{" not in str(ref) else m.group(0)
                new = _SIMPLE_REF.sub(sub, value)
                if new != value:
                    merged[key], changed = new, True
        if not changed:
            break
    return merged


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
    v = platform_vars(inv)
    # Test stacks keep generated secrets on the machine (moodleops_local_secrets_dir);
    # production has none on disk: vault for Ansible, MOODLEOPS_<NAME> for Python.
    secrets_dir = os.environ.get("MOODLEOPS_SECRETS_DIR") or str(v.get("moodleops_local_secrets_dir") or "")
    return Site(
        env=inv.env,
        wwwroot=str(v["moodle_wwwroot"]).rstrip("/"),
        current_link=Path(str(v["moodle_current_link"])),
        dataroot=Path(str(v["moodle_dataroot"])),
        php=f"/usr/bin/php{v['php_version']}",
        lib_dir=Path(str(v["moodleops_lib_dir"])),
        state_dir=Path(str(v["moodleops_state_dir"])),
        web_user=str(v["moodle_web_user"]),
        db_host=str(v["moodle_db_host"]),
        db_port=int(v["moodle_db_port"]),
        db_name=str(v["moodle_db_name"]),
        db_prefix=str(v["moodle_db_prefix"]),
        db_ro_user=str(v["moodle_db_ro_user"]),
        secrets_dir=Path(secrets_dir) if secrets_dir else None,
    )
