"""Secrets of a test stack, generated on first use into a directory of the
machine (moodleops_local_secrets_dir, mode 0600), never into git. Production
secrets come from vault (Ansible) or the environment (Python)."""

from __future__ import annotations

import secrets
import string
from pathlib import Path

# Moodle's default password policy wants a digit, a lower and an upper case
# letter and a symbol; the database passwords only need to be long.
_NAMES = ("db_password", "db_ro_password", "db_replication_password", "admin_password")


def _admin_password() -> str:
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(16))
    return core + secrets.choice(string.ascii_lowercase) + secrets.choice(string.ascii_uppercase) + \
        secrets.choice(string.digits) + secrets.choice("!#%+-=")


def ensure_local_secrets(secrets_dir: Path) -> list[str]:
    """Create the missing secrets; return the names created. Existing ones are
    never changed (the database and Moodle already use them)."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = []
    for name in _NAMES:
        path = secrets_dir / name
        if path.exists():
            continue
        value = _admin_password() if name == "admin_password" else secrets.token_hex(16)
        path.touch(mode=0o600)
        path.write_text(value, encoding="utf-8")
        created.append(name)
    return created
