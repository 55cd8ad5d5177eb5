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
# A stack whose backups run on a host of their own (the rehearsal's job host)
# gets these too: the S3 key of its moto, and the key sealing the manifests.
BACKUP_NAMES = ("backup_s3_secret_key", "backup_manifest_key")


def _admin_password() -> str:
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(16))
    return core + secrets.choice(string.ascii_lowercase) + secrets.choice(string.ascii_uppercase) + \
        secrets.choice(string.digits) + secrets.choice("!#%+-=")


def _value(name: str) -> str:
    if name == "admin_password":
        return _admin_password()
    if name == "backup_manifest_key":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    return secrets.token_hex(16)


def ensure_local_secrets(secrets_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """Create the missing secrets (with `extra`, e.g. BACKUP_NAMES); return the
    names created. Existing ones are never changed (the database, Moodle and
    the sealed manifests already use them)."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = []
    for name in (*_NAMES, *extra):
        path = secrets_dir / name
        if path.exists():
            continue
        value = _value(name)
        path.touch(mode=0o600)
        path.write_text(value, encoding="utf-8")
        created.append(name)
    return created
