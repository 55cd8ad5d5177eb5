"""Which backups to keep (newest of each of the last N days, ISO weeks and
months that have a backup, as counted in the inventory) and what pruning may
delete: manifests not kept, their dump and archive, and blobs that no kept
manifest lists.

Safe against a backup running on another host: while a fresh in-progress
marker is in the bucket (markers.py) no blob, dump or archive is deleted; and
a blob's grace period counts from the newest backup that referenced it (its
upload time only if none ever did), so content a recent backup relied on
survives even when that backup is dropped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moodleops.backup import manifest, markers
from moodleops.backup.config import BackupConfig, Retention
from moodleops.backup.s3 import delete_keys, list_keys

GRACE = timedelta(hours=48)


def kept_ids(ids: list[str], r: Retention) -> set[str]:
    newest_first = sorted(ids, reverse=True)
    keep: set[str] = set(newest_first[:1])   # the newest backup is always kept
    for count, bucket_of in ((r.daily, lambda t: t.date()),
                             (r.weekly, lambda t: t.isocalendar()[:2]),
                             (r.monthly, lambda t: (t.year, t.month))):
        seen: list[object] = []
        for bid in newest_first:
            b = bucket_of(manifest.id_time(bid))
            if b in seen:
                continue
            if len(seen) == count:
                break
            seen.append(b)
            keep.add(bid)
    return keep


@dataclass
class PrunePlan:
    keep: list[str]
    drop: list[str]
    keys: list[str]          # objects to delete: manifests, dumps, archives, orphans
    blobs: list[str]         # blob keys to delete
    blob_bytes: int
    blobs_kept: int
    in_progress: list[str]   # backups running elsewhere (fresh markers): no blob, dump or archive deleted
    stale_markers: list[str]  # markers of runs killed long ago: reported, not honoured


def plan(s3: Any, cfg: BackupConfig, *, now: datetime | None = None, grace: timedelta = GRACE) -> PrunePlan:
    now = now or datetime.now(UTC)
    running = markers.backups_in_progress(s3, cfg)
    in_progress = [m.backup_id for m in running if m.fresh(now)]
    stale = [m.backup_id for m in running if not m.fresh(now)]
    ids = manifest.list_ids(s3, cfg)
    keep = kept_ids(ids, cfg.retention) if ids else set()
    drop = [i for i in ids if i not in keep]
    needed: set[str] = set()
    kept_objects: set[str] = set()
    last_ref: dict[str, datetime] = {}    # blob -> time of the newest backup listing it
    for bid in sorted(ids):
        m = manifest.get(s3, cfg, manifest.manifest_key(cfg, bid))
        when = manifest.id_time(bid)
        for sha1 in manifest.iter_blobs(s3, cfg, m):
            last_ref[sha1] = when
            if bid in keep:
                needed.add(sha1)
        if bid in keep:
            kept_objects.update(manifest.referenced_keys(m) | {manifest.manifest_key(cfg, bid)})
    keys: list[str] = []
    for area in ("manifests", "db", "moodledata"):
        for key, meta in list_keys(s3, cfg, cfg.key(area, "")).items():
            if key in kept_objects:
                continue
            if area == "manifests" and key.endswith(".json.gz"):
                keys.append(key)     # a manifest not kept is dropped whatever its age
            elif ((area != "manifests" or key.endswith(".blobs.gz")) and not in_progress
                  and now - meta["last_modified"] > grace):
                keys.append(key)
    blob_prefix = cfg.key("blobs", "")
    blobs, nbytes, kept = [], 0, 0
    for key, meta in list_keys(s3, cfg, blob_prefix).items():
        sha1 = key[len(blob_prefix):]
        if in_progress or sha1 in needed or now - last_ref.get(sha1, meta["last_modified"]) <= grace:
            kept += 1
            continue
        blobs.append(key)
        nbytes += meta["size"]
    return PrunePlan(keep=sorted(keep), drop=drop, keys=sorted(keys), blobs=sorted(blobs), blob_bytes=nbytes,
                     blobs_kept=kept, in_progress=in_progress, stale_markers=stale)


def apply(s3: Any, cfg: BackupConfig, p: PrunePlan) -> tuple[datetime, list[str]]:
    """Delete what the plan says; returns when the prune started (its marker)
    and the sha1 of the blobs deleted (for this host's bucket index)."""
    started = markers.begin_prune(s3, cfg)
    # A backup that started after the plan was made: delete manifests only.
    late = [m.backup_id for m in markers.backups_in_progress(s3, cfg) if m.fresh(datetime.now(UTC))]
    # Manifests first: a crash half-way leaves unreferenced objects (pruned next
    # time), never a manifest pointing at deleted blobs.
    manifests = [k for k in p.keys if "/manifests/" in "/" + k]
    delete_keys(s3, cfg, manifests)
    deleted: list[str] = []
    if not late:
        delete_keys(s3, cfg, [k for k in p.keys if k not in manifests])
        delete_keys(s3, cfg, p.blobs)
        deleted = [k.rsplit("/", 1)[-1] for k in p.blobs]
    markers.end_prune(s3, cfg, started)
    return started, deleted
