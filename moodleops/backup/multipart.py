"""Multipart upload of one large local file that survives an interruption:
the upload id and the parts already sent are kept in a small JSON state file;
a rerun asks S3 (ListParts) what really arrived and sends only the rest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from moodleops.backup.config import BackupConfig
from moodleops.backup.progress import Progress


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str            # hex, of the whole file
    parts: int
    parts_resumed: int     # parts found already uploaded by an earlier, interrupted run


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)   # never a half-written state file


def _uploaded_parts(s3: Any, cfg: BackupConfig, key: str, upload_id: str) -> dict[int, dict[str, str]] | None:
    """Parts S3 holds for this upload, or None when the upload is gone (completed, aborted, expired)."""
    parts: dict[int, dict[str, str]] = {}
    try:
        for page in s3.get_paginator("list_parts").paginate(Bucket=cfg.bucket, Key=key, UploadId=upload_id):
            for p in page.get("Parts", []):
                parts[p["PartNumber"]] = {"ETag": p["ETag"], "Size": p["Size"]}
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
            return None
        raise
    return parts


def upload_file(s3: Any, cfg: BackupConfig, path: Path, key: str, state_file: Path, *,
                metadata: dict[str, str] | None = None, progress_label: str = "upload",
                on_part: Callable[[int], None] | None = None) -> UploadResult:
    """Upload `path` to `key`, resuming the upload recorded in `state_file` if it
    is for the same file (same size and mtime). `on_part(n)` is called after
    each part is sent (tests use it to interrupt a transfer)."""
    st = path.stat()
    part_size = cfg.part_size
    nparts = max(1, -(-st.st_size // part_size))
    state: dict[str, Any] | None = None
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if (state.get("key"), state.get("bucket"), state.get("size"), state.get("mtime_ns"), state.get("part_size")) \
                != (key, cfg.bucket, st.st_size, st.st_mtime_ns, part_size):
            state = None   # another file: start afresh (the stale upload expires via the bucket's lifecycle rule)
    done: dict[int, dict[str, str]] = {}
    if state is not None:
        found = _uploaded_parts(s3, cfg, key, state["upload_id"])
        if found is None:
            state = None
        else:
            # Trust S3, not our notes: only parts it lists, with the size we would send.
            expected = {n: min(part_size, st.st_size - (n - 1) * part_size) for n in range(1, nparts + 1)}
            done = {n: p for n, p in found.items() if expected.get(n) == p["Size"]}
            for n, p in done.items():
                p["ChecksumSHA256"] = state.get("checksums", {}).get(str(n), "")
    if state is None:
        resp = s3.create_multipart_upload(Bucket=cfg.bucket, Key=key, ServerSideEncryption=cfg.sse,
                                          ChecksumAlgorithm="SHA256", Metadata=metadata or {})
        state = {"bucket": cfg.bucket, "key": key, "upload_id": resp["UploadId"], "size": st.st_size,
                 "mtime_ns": st.st_mtime_ns, "part_size": part_size, "checksums": {}}
        state_file.parent.mkdir(parents=True, exist_ok=True)
        _write_state(state_file, state)
    resumed = len(done)
    whole = hashlib.sha256()
    progress = Progress(progress_label, st.st_size, nparts)
    with open(path, "rb") as fh:
        for n in range(1, nparts + 1):
            data = fh.read(part_size)
            whole.update(data)   # the whole-file digest needs every byte, sent now or before
            if n in done and done[n]["ChecksumSHA256"]:
                progress.add(len(data), 1)
                continue
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
            resp = s3.upload_part(Bucket=cfg.bucket, Key=key, UploadId=state["upload_id"], PartNumber=n, Body=data,
                                  ChecksumAlgorithm="SHA256", ChecksumSHA256=digest)
            done[n] = {"ETag": resp["ETag"], "ChecksumSHA256": digest}
            state["checksums"][str(n)] = digest
            _write_state(state_file, state)
            progress.add(len(data), 1)
            if on_part is not None:
                on_part(n)
    s3.complete_multipart_upload(
        Bucket=cfg.bucket, Key=key, UploadId=state["upload_id"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]["ETag"], "ChecksumSHA256": done[n]["ChecksumSHA256"]}
                                   for n in sorted(done)]})
    state_file.unlink(missing_ok=True)
    return UploadResult(key=key, size=st.st_size, sha256=whole.hexdigest(), parts=nparts, parts_resumed=resumed)
