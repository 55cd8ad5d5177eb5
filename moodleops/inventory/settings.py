"""Platform-wide settings of one environment, for the playbooks and for Python alike.

Each setting has one Ansible name (what roles and group_vars use), one type and
one default, in SETTINGS below: this table is their documentation. The value
comes from inventory/<env>/group_vars/all.yml when set there, else from the
default. The vars plugin (playbooks/vars_plugins/moodleops_inventory.py) gives
Ansible exactly these values, so a role and a Python command can never see two
different database hosts or data roots.

A setting must be a plain value, not a Jinja template: Python reads it too, and
only Ansible could render a template. Values only Ansible can know (secrets
from vault or files, lookups) stay in group_vars under other names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from moodleops.inventory._reader import MISSING, Node
from moodleops.inventory.model import Settings

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_PHP = re.compile(r"^\d\.\d$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PREFIX = re.compile(r"^[a-z0-9_]{0,20}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOST = re.compile(r"^[A-Za-z0-9.:_-]+$")


@dataclass(frozen=True)
class Setting:
    var: str                      # Ansible variable name
    attr: str                     # Settings field
    kind: str                     # text | int | bool | path | optional_path | mirror
    default: Any                  # a value, or a function of the settings read so far
    allowed: str = ""
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


def _under_base(sub: str) -> Callable[[dict[str, Any]], Any]:
    return lambda done: done["base_dir"] / sub


SETTINGS: tuple[Setting, ...] = (
    Setting("moodleops_env", "env_name", "text", None, "a name such as local or production", _NAME),
    Setting("moodle_wwwroot", "wwwroot", "text", "http://127.0.0.1:8080",
            "an http(s):// URL without spaces", _URL),
    # What the operator's machine trusts for moodle_wwwroot's certificate (the
    # health check's login): unset, the system's CAs. A self-signed load
    # balancer's certificate is fetched here by the tls_certificate role.
    Setting("moodle_ca_bundle", "ca_bundle", "optional_path", None),
    Setting("php_version", "php_version", "text", "8.1", "a PHP version 'X.Y', quoted", _PHP),
    Setting("moodle_db_host", "db_host", "text", "127.0.0.1", "a host name or address", _HOST),
    # Where measurements read (exporters, capacity reports, billing): the streaming
    # replica when there is one, so scans never load the primary.
    Setting("moodle_db_read_host", "db_read_host", "text", lambda done: done["db_host"],
            "a host name or address", _HOST),
    Setting("moodle_db_port", "db_port", "int", 5432, minimum=1, maximum=65535),
    Setting("moodle_db_name", "db_name", "text", "moodle", "a database name [a-z_][a-z0-9_]*", _NAME),
    Setting("moodle_db_user", "db_user", "text", "moodle", "a role name [a-z_][a-z0-9_]*", _NAME),
    Setting("moodle_db_prefix", "db_prefix", "text", "mdl_", "a table prefix [a-z0-9_]*", _PREFIX),
    # Read-only role for exporters and reports.
    Setting("moodle_db_ro_user", "db_ro_user", "text", "moodleops_ro", "a role name [a-z_][a-z0-9_]*", _NAME),
    # releases/ holds one directory per pinned release; current -> releases/<name>.
    Setting("moodle_base_dir", "base_dir", "path", Path("/srv/moodle")),
    Setting("moodle_releases_dir", "releases_dir", "path", _under_base("releases")),
    Setting("moodle_current_link", "current_link", "path", _under_base("current")),
    # Never under the web root.
    Setting("moodle_dataroot", "dataroot", "path", _under_base("moodledata")),
    Setting("moodle_web_user", "web_user", "text", "www-data", "a system user name", _USER),
    Setting("moodle_web_group", "web_group", "text", "www-data", "a system group name", _USER),
    # PHP CLI helpers installed by the playbooks.
    Setting("moodleops_lib_dir", "lib_dir", "path", Path("/usr/local/lib/moodleops")),
    # Journals, locks, run records.
    Setting("moodleops_state_dir", "state_dir", "path", Path("/var/lib/moodleops")),
    # Test stacks only: secrets generated on the machine (moodleops platform up).
    Setting("moodleops_local_secrets_dir", "local_secrets_dir", "optional_path", None),
    # 'mirror' (a directory of the pinned files) or 'upstream' (each pin's url).
    Setting("moodle_artifact_source", "artifact_source", "text", "upstream",
            choices=("mirror", "upstream")),
    # The mirror directory (source 'mirror'): absolute, or relative to the
    # environment directory; $MOODLEOPS_ARTIFACTS, when set, wins (tests, one-offs).
    Setting("moodle_artifact_mirror", "artifact_mirror", "mirror", None),
    # true lifts Moodle 4.1's PHP 8.2 refusal in the release tree: test stacks only.
    Setting("moodle_allow_unsupported_php", "allow_unsupported_php", "bool", False),
    Setting("moodle_admin_user", "admin_user", "text", "admin", "a Moodle user name", _USER),
    Setting("php_fpm_max_children", "php_fpm_max_children", "int", 24, minimum=1, maximum=4096),
    # false: a rehearsal Moodle beside the real one must not take over the real monitoring.
    Setting("monitoring_enabled", "monitoring_enabled", "bool", True),
)


def read_settings(file: str, env_dir: Path, raw: dict[str, Any]) -> Settings:
    """Settings of the environment `env_dir` from its raw group_vars mapping `raw` read from `file`."""
    done: dict[str, Any] = {}
    for s in SETTINGS:
        node = Node(file, s.var, raw.get(s.var, MISSING))
        done[s.attr] = _value(s, node, done, env_dir)
    done["wwwroot"] = done["wwwroot"].rstrip("/")
    for attr in ("releases_dir", "current_link", "dataroot"):
        if done[attr] == done["base_dir"]:
            Node(file, _var(attr), str(done[attr])).fail("a directory other than moodle_base_dir")
    return Settings(**done)


def ansible_vars(settings: Settings) -> dict[str, Any]:
    """The settings under their Ansible names, as YAML-ready plain values."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(settings, s.attr)
        out[s.var] = "" if value is None else str(value) if isinstance(value, Path) else value
    return out


def _var(attr: str) -> str:
    return next(s.var for s in SETTINGS if s.attr == attr)


def _value(s: Setting, node: Node, done: dict[str, Any], env_dir: Path) -> Any:
    if s.kind == "mirror" and os.environ.get("MOODLEOPS_ARTIFACTS"):
        return Path(os.environ["MOODLEOPS_ARTIFACTS"]).resolve()
    if node.missing:
        if s.attr == "env_name":
            return env_dir.name
        return s.default(done) if callable(s.default) else s.default
    if isinstance(node.value, str) and ("{{" in node.value or "{%" in node.value):
        node.fail("a plain value, not a Jinja template: Python tools read this setting too")
    if s.kind == "int":
        return node.integer(s.minimum, s.maximum)
    if s.kind == "bool":
        if not isinstance(node.value, bool):
            node.fail("true or false")
        return node.value
    if s.kind == "mirror":
        if node.value in (None, ""):
            return None
        return (env_dir / node.text(allowed="a directory path")).resolve()
    if s.kind in ("path", "optional_path"):
        if s.kind == "optional_path" and node.value in (None, ""):
            return None
        text = node.text(allowed="an absolute path")
        if not PurePosixPath(text).is_absolute() or ".." in PurePosixPath(text).parts:
            node.fail("an absolute path without '..'")
        return Path(text.rstrip("/") or "/")
    if s.choices:
        if node.value not in s.choices:
            node.fail("one of: " + ", ".join(s.choices))
        return node.value
    return node.text(s.pattern, s.allowed)
