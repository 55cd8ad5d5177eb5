"""Client-side encryption of the secrets a manifest carries (config.php holds
the database password): sealed with Fernet (AES-128-CBC + HMAC-SHA256, from
the maintained `cryptography` library) under a key that never enters the
bucket, so a bucket reader learns no password. The key is the site secret
`backup_manifest_key` (MOODLEOPS_BACKUP_MANIFEST_KEY, or the file of that name
in the secrets directory); `moodleops backup keygen` makes one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from moodleops.backup.s3 import BackupError
from moodleops.site import Site, SiteError

KEY_NAME = "backup_manifest_key"
CIPHER = "fernet"


def key_id(key: bytes) -> str:
    """Names a key without revealing it (a restore says which key a manifest needs)."""
    return hashlib.sha256(key.strip()).hexdigest()[:16]


def load_key(site: Site) -> bytes:
    try:
        key = site.secret(KEY_NAME).encode()
    except SiteError as exc:
        raise BackupError(f"no manifest encryption key: {exc} (make one with `moodleops backup keygen`, "
                          f"and keep a copy in the vault: without it no backup's secrets can be read)") from exc
    try:
        Fernet(key)
    except ValueError as exc:
        raise BackupError(f"the {KEY_NAME} secret is not a Fernet key (32 url-safe base64 bytes, as "
                          f"`moodleops backup keygen` makes)") from exc
    return key


def seal(key: bytes, secrets: dict[str, str]) -> dict[str, object]:
    f = Fernet(key)
    return {"cipher": CIPHER, "key_id": key_id(key),
            "values": {name: f.encrypt(value.encode()).decode() for name, value in secrets.items()}}


def unseal(key: bytes, sealed: dict[str, object], where: str) -> dict[str, str]:
    if sealed.get("cipher") != CIPHER:
        raise BackupError(f"{where}: secrets sealed with {sealed.get('cipher')!r}, expected {CIPHER}")
    if sealed.get("key_id") != key_id(key):
        raise BackupError(f"{where}: secrets were sealed with key {sealed.get('key_id')}, the "
                          f"{KEY_NAME} given is key {key_id(key)}: use the key of that time (vault); "
                          f"nothing on the target was changed")
    f = Fernet(key)
    values = sealed.get("values")
    assert isinstance(values, dict)
    try:
        return {name: f.decrypt(str(token).encode()).decode() for name, token in values.items()}
    except InvalidToken as exc:
        raise BackupError(f"{where}: a sealed secret does not decrypt with key {key_id(key)} (tampered "
                          f"with?); nothing on the target was changed") from exc


def write_new_key(path: Path) -> str:
    """A new key in `path` (mode 0600, never overwritten); returns its id."""
    key = Fernet.generate_key()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise BackupError(f"{path} exists: a key in use is never replaced (its backups need it)") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key_id(key)
