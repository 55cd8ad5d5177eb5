"""The manifest of one platform backup run: everything a restore needs to know
(database dump, blobs, moodledata archive, Moodle and plugin versions,
config.php, what the run checked). It is written last, so a manifest in the
bucket means a complete backup. Stored gzip-compressed as
manifests/<id>.json.gz with server-side encryption; since format 2 its
secrets (config.php, hence the database password) are also sealed
client-side (sealing.py): a bucket reader learns no password."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from moodleops.backup.config import BackupConfig
from moodleops.backup.s3 import BackupError, get_bytes, list_keys, put_bytes

FORMAT = 2
READABLE = (1, 2)       # format 1 carried config.php in clear: still listed, pruned and restorable
_SUFFIX = ".json.gz"


def new_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def id_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def manifest_key(cfg: BackupConfig, backup_id: str) -> str:
    return cfg.key("manifests", backup_id + _SUFFIX)


def resolve_key(cfg: BackupConfig, given: str) -> str:
    """Accept a backup id (20290101T020000Z), a file name or a full key."""
    name = given.rsplit("/", 1)[-1].removesuffix(_SUFFIX)
    try:
        id_time(name)
    except ValueError as exc:
        raise BackupError(f"--manifest {given!r} is not a backup id or manifest key "
                          f"(allowed: an id like 20290101T020000Z or {cfg.key('manifests', '<id>' + _SUFFIX)}; "
                          f"see `moodleops backup list`)") from exc
    return manifest_key(cfg, name)


def blob_list_key(cfg: BackupConfig, backup_id: str) -> str:
    return cfg.key("manifests", backup_id + ".blobs.gz")


def iter_blobs(s3: Any, cfg: BackupConfig, m: dict[str, Any]) -> Iterator[str]:
    """The sha1 of every blob a manifest needs: inline (format 1, small
    synthetic manifests) or its gzip list object, checked against its sha256
    before a line is used."""
    blobs = m["blobs"]
    if "sha1" in blobs:
        yield from blobs["sha1"]
        return
    ref = blobs["list"]
    data = get_bytes(s3, cfg, ref["key"])
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise BackupError(f"s3://{cfg.bucket}/{ref['key']} is corrupted: its sha256 is not the manifest's "
                          f"(nothing was changed)")
    with gzip.open(io.BytesIO(data), "rt") as fh:
        for line in fh:
            yield line.rstrip("\n")


def referenced_keys(m: dict[str, Any]) -> set[str]:
    """The objects a manifest needs besides blobs."""
    keys = {m["database"]["key"], m["moodledata"]["key"]}
    if "list" in m["blobs"]:
        keys.add(m["blobs"]["list"]["key"])
    return keys


def put(s3: Any, cfg: BackupConfig, manifest: dict[str, Any]) -> str:
    key = manifest_key(cfg, manifest["id"])
    put_bytes(s3, cfg, key, gzip.compress(json.dumps(manifest, indent=1, sort_keys=True).encode()),
              content_type="application/gzip")
    return key


def get(s3: Any, cfg: BackupConfig, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(gzip.decompress(get_bytes(s3, cfg, key)))
    if data.get("format") not in READABLE:
        raise BackupError(f"{key}: manifest format {data.get('format')!r} is not supported "
                          f"(readable: {', '.join(map(str, READABLE))})")
    return data


def list_ids(s3: Any, cfg: BackupConfig) -> list[str]:
    """Backup ids with a manifest, oldest first."""
    prefix = cfg.key("manifests", "")
    ids = []
    for key in list_keys(s3, cfg, prefix):
        name = key[len(prefix):].removesuffix(_SUFFIX)
        try:
            id_time(name)
        except ValueError:
            continue
        ids.append(name)
    return sorted(ids)
