"""Backup settings, read from the inventory (group_vars `backup_*`, see
inventory/local/group_vars/all.yml) and checked once, so every command fails
early with one line naming the bad key."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from moodleops.inventory import Inventory
from moodleops.inventory.errors import InventoryError

# What the platform backup leaves out of moodledata: filedir goes as blobs,
# the rest is rebuilt by Moodle (caches, sessions, temp) or is garbage (trash).
DEFAULT_EXCLUDES = ("filedir", "cache", "localcache", "temp", "sessions", "trashdir", "lock",
                    "climaintenance.html")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^eu-[a-z]+-[0-9]$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:]+\]?$")
_MAILBOX = re.compile(r"^[^@\s<>]+@[A-Za-z0-9.-]+$")
# S3 takes at most 5 GiB in one PUT: above that, multipart is the only way.
MAX_SINGLE_PUT_MB = 5 * 1024


@dataclass(frozen=True)
class Retention:
    daily: int
    weekly: int
    monthly: int


@dataclass(frozen=True)
class BackupConfig:
    bucket: str
    region: str
    prefix: str                 # "" or ends with "/"
    endpoint_url: str | None    # None: AWS itself
    sse: str                    # server-side encryption requested on every object
    retention: Retention
    moodledata_excludes: tuple[str, ...]
    part_size: int              # multipart part size (bytes)
    workers: int                # parallel blob transfers
    link_expiry_hours: int      # export pre-signed links
    export_user_data_default: bool
    export_user_data: dict[str, bool]   # school code -> with user data
    reminder_days: tuple[int, ...]      # days before the agreement end when pending schools are reported
    export_multipart_threshold: int     # bytes: a course export above this goes up in parts
    smtp_host: str                      # the relay that mails the export links to the referents
    smtp_port: int
    mail_from: str
    # The links open a school's data: where the relay offers it, the mail goes
    # over TLS (STARTTLS), the relay's certificate checked against smtp_ca_file
    # (empty: the system's CAs).
    smtp_starttls: bool = False
    smtp_ca_file: str = ""

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def user_data_for(self, school_code: str) -> bool:
        return self.export_user_data.get(school_code, self.export_user_data_default)


def _file(inv: Inventory) -> str:
    return str(inv.env_dir / "group_vars" / "all.yml")


def _int(inv: Inventory, key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InventoryError(_file(inv), key, value, f"an integer from {lo} to {hi}")
    return value


def backup_config(inv: Inventory) -> BackupConfig:
    v = inv.vars
    f = _file(inv)
    bucket = v.get("backup_s3_bucket")
    if not isinstance(bucket, str) or not _BUCKET.match(bucket):
        raise InventoryError(f, "backup_s3_bucket", bucket, "an S3 bucket name: 3-63 of [a-z0-9.-]")
    region = v.get("backup_s3_region")
    if not isinstance(region, str) or not _REGION.match(region):
        # The agreement keeps the schools' data in the EU.
        raise InventoryError(f, "backup_s3_region", region, "an EU region such as eu-west-3")
    prefix = str(v.get("backup_s3_prefix") or "")
    if prefix and (prefix.startswith("/") or not prefix.endswith("/")):
        raise InventoryError(f, "backup_s3_prefix", prefix, "empty, or a key prefix ending with '/'")
    # The environment wins so that a test or a one-off can point at another endpoint.
    endpoint = os.environ.get("MOODLEOPS_BACKUP_S3_ENDPOINT_URL") or str(v.get("backup_s3_endpoint_url") or "")
    if endpoint and not re.match(r"^https?://", endpoint):
        raise InventoryError(f, "backup_s3_endpoint_url", endpoint, "empty (AWS) or an http(s):// URL")
    sse = str(v.get("backup_s3_sse") or "AES256")
    if sse not in ("AES256", "aws:kms"):
        raise InventoryError(f, "backup_s3_sse", sse, "AES256 or aws:kms")
    ret = v.get("backup_retention") or {}
    if not isinstance(ret, dict) or set(ret) - {"daily", "weekly", "monthly"}:
        raise InventoryError(f, "backup_retention", ret, "a mapping of daily, weekly, monthly counts")
    retention = Retention(*(_int(inv, f"backup_retention.{k}", ret.get(k, 0), 0, 1000)
                            for k in ("daily", "weekly", "monthly")))
    if retention.daily + retention.weekly + retention.monthly == 0:
        raise InventoryError(f, "backup_retention", ret, "at least one count above 0")
    excludes = v.get("backup_moodledata_excludes", list(DEFAULT_EXCLUDES))
    if not isinstance(excludes, list) or "filedir" not in excludes:
        raise InventoryError(f, "backup_moodledata_excludes", excludes,
                             "a list of top-level moodledata names that includes filedir")
    user_data = v.get("backup_export_user_data") or {}
    codes = {s.code for s in inv.schools}
    if not isinstance(user_data, dict):
        raise InventoryError(f, "backup_export_user_data", user_data, "a mapping of school code to true/false")
    for code, flag in user_data.items():
        if code not in codes:
            raise InventoryError(f, "backup_export_user_data", code, "a school code of schools.yml")
        if not isinstance(flag, bool):
            raise InventoryError(f, f"backup_export_user_data.{code}", flag, "true or false")
    default_ud = v.get("backup_export_user_data_default", False)
    if not isinstance(default_ud, bool):
        raise InventoryError(f, "backup_export_user_data_default", default_ud, "true or false")
    reminders = v.get("backup_export_reminder_days", [365, 180, 90, 30, 7])
    if not isinstance(reminders, list) or not reminders:
        raise InventoryError(f, "backup_export_reminder_days", reminders, "a non-empty list of day counts")
    smtp_host = v.get("backup_export_smtp_host")
    if not isinstance(smtp_host, str) or not _HOST.match(smtp_host):
        raise InventoryError(f, "backup_export_smtp_host", smtp_host, "the SMTP relay's host name or address")
    mail_from = v.get("backup_export_mail_from")
    if not isinstance(mail_from, str) or not _MAILBOX.match(mail_from):
        raise InventoryError(f, "backup_export_mail_from", mail_from, "a mailbox such as moodle-exports@example.org")
    starttls = v.get("backup_export_smtp_starttls", False)
    if not isinstance(starttls, bool):
        raise InventoryError(f, "backup_export_smtp_starttls", starttls, "true or false")
    ca_file = v.get("backup_export_smtp_ca_file", "") or ""
    if not isinstance(ca_file, str) or (ca_file and not ca_file.startswith("/")):
        raise InventoryError(f, "backup_export_smtp_ca_file", ca_file,
                             "an absolute path to a PEM CA bundle, or empty for the system's CAs")
    if ca_file and not starttls:
        raise InventoryError(f, "backup_export_smtp_ca_file", ca_file,
                             "empty while backup_export_smtp_starttls is false (no TLS, no certificate)")
    return BackupConfig(
        bucket=bucket, region=region, prefix=prefix, endpoint_url=endpoint or None, sse=sse,
        retention=retention, moodledata_excludes=tuple(str(x) for x in excludes),
        part_size=_int(inv, "backup_part_size_mb", v.get("backup_part_size_mb", 64), 5, 5000) * 1024 * 1024,
        workers=_int(inv, "backup_workers", v.get("backup_workers", 4), 1, 32),
        # SigV4 pre-signed URLs live at most 7 days.
        link_expiry_hours=_int(inv, "backup_export_link_expiry_hours",
                               v.get("backup_export_link_expiry_hours", 168), 1, 168),
        export_user_data_default=default_ud,
        export_user_data={str(k): bool(x) for k, x in user_data.items()},
        reminder_days=tuple(sorted((_int(inv, "backup_export_reminder_days", d, 1, 3650) for d in reminders),
                                   reverse=True)),
        export_multipart_threshold=_int(inv, "backup_export_multipart_threshold_mb",
                                        v.get("backup_export_multipart_threshold_mb", MAX_SINGLE_PUT_MB),
                                        1, MAX_SINGLE_PUT_MB) * 1024 * 1024,
        smtp_host=smtp_host.strip("[]"),
        smtp_port=_int(inv, "backup_export_smtp_port", v.get("backup_export_smtp_port", 25), 1, 65535),
        mail_from=mail_from,
        smtp_starttls=starttls,
        smtp_ca_file=ca_file,
    )
