"""The S3 client and the few object helpers every backup command shares.
Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID/..., a profile,
an instance role): never from the inventory."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from moodleops.backup.config import BackupConfig


class BackupError(RuntimeError):
    """A backup, restore or export step failed; the message says which object or step."""


def client(cfg: BackupConfig, session: Any = None) -> Any:
    return (session or boto3).client(
        "s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url,
        config=Config(retries={"max_attempts": 5, "mode": "standard"},
                      max_pool_connections=max(10, cfg.workers * 2),
                      # Only compute/validate checksums when we ask for them: we always do.
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def ensure_bucket(s3: Any, cfg: BackupConfig) -> None:
    """Fail early and clearly when the bucket is missing or not ours."""
    try:
        s3.head_bucket(Bucket=cfg.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise BackupError(f"bucket {cfg.bucket!r} at {cfg.endpoint_url or 'AWS'} ({cfg.region}) is not usable: "
                          f"{code} (create it, with versioning and an EU location, before the first backup)") from exc


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put_bytes(s3: Any, cfg: BackupConfig, key: str, data: bytes, *, content_type: str = "application/octet-stream",
              metadata: dict[str, str] | None = None) -> None:
    """Small object, checksummed by S3 on arrival and encrypted at rest."""
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=data, ContentType=content_type,
                  ServerSideEncryption=cfg.sse, ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64(data),
                  Metadata=metadata or {})


def get_bytes(s3: Any, cfg: BackupConfig, key: str) -> bytes:
    try:
        return bytes(s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise BackupError(f"s3://{cfg.bucket}/{key} does not exist") from exc
        raise


def exists(s3: Any, cfg: BackupConfig, key: str) -> bool:
    try:
        s3.head_object(Bucket=cfg.bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def list_keys(s3: Any, cfg: BackupConfig, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object under `prefix`: key -> {size, last_modified}; one paginated listing."""
    out: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = {"size": obj["Size"], "last_modified": obj["LastModified"]}
    return out


def delete_keys(s3: Any, cfg: BackupConfig, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = keys[i:i + 1000]
        resp = s3.delete_objects(Bucket=cfg.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise BackupError(f"could not delete {len(resp['Errors'])} object(s), e.g. {first.get('Key')}: "
                              f"{first.get('Code')} {first.get('Message')}")


@dataclass(frozen=True)
class Presigner:
    """A client that signs links with credentials it knows the expiry of (when
    the chain says: session credentials, an instance role, AWS_CREDENTIAL_EXPIRATION)."""

    client: Any
    credentials_expire: datetime | None
    session_credentials: bool      # a session token: temporary, even when the expiry is unknown

    def url(self, bucket: str, key: str, seconds: int) -> str:
        return str(self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=seconds))


def presigner(cfg: BackupConfig) -> Presigner:
    """The links are signed by exactly the credentials whose expiry is read here:
    one session resolves them once for both."""
    from botocore.exceptions import NoCredentialsError

    session = boto3.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise NoCredentialsError()
    frozen = creds.get_frozen_credentials()   # refreshes now if due, so the expiry below is the signing one
    # botocore keeps the expiry of refreshable credentials only in this attribute.
    expiry = getattr(creds, "_expiry_time", None)
    return Presigner(client=client(cfg, session), credentials_expire=expiry,
                     session_credentials=bool(frozen.token))
