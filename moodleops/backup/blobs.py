"""moodledata/filedir as content-addressed blobs: the file name IS the sha1 of
its content (filedir/<h0:2>/<h2:4>/<sha1>), so the bucket key is blobs/<sha1>,
a blob already in the bucket is never sent again, and every byte read back
(before upload, after download) is checked against its name."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moodleops.backup.config import BackupConfig
from moodleops.backup.progress import Progress
from moodleops.backup.s3 import BackupError, list_keys

SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1024 * 1024


def blob_key(cfg: BackupConfig, sha1: str) -> str:
    return cfg.key("blobs", sha1)


def local_path(filedir: Path, sha1: str) -> Path:
    return filedir / sha1[0:2] / sha1[2:4] / sha1


def scan_filedir(filedir: Path) -> dict[str, int]:
    """sha1 -> size of every pool file (in memory: small trees, tests)."""
    return dict(iter_filedir(filedir))


def iter_filedir(filedir: Path) -> Iterator[tuple[str, int]]:
    """(sha1, size) of every pool file, streamed. Only names that are a sha1 at
    the right place count: warning.txt, jackpot/ and <hash>.tmp are not content."""
    if not filedir.is_dir():
        return
    for top in os.scandir(filedir):
        if not (top.is_dir(follow_symlinks=False) and len(top.name) == 2):
            continue
        for sub in os.scandir(top.path):
            if not (sub.is_dir(follow_symlinks=False) and len(sub.name) == 2):
                continue
            for f in os.scandir(sub.path):
                if SHA1_RE.match(f.name) and f.name[0:2] == top.name and f.name[2:4] == sub.name \
                        and f.is_file(follow_symlinks=False):
                    try:
                        yield f.name, f.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue        # deleted by Moodle while listed


def bucket_blobs(s3: Any, cfg: BackupConfig) -> dict[str, int]:
    """sha1 -> size of every blob in the bucket (one paginated listing)."""
    prefix = cfg.key("blobs", "")
    return {k[len(prefix):]: v["size"] for k, v in list_keys(s3, cfg, prefix).items() if SHA1_RE.match(k[len(prefix):])}


@dataclass
class BlobReport:
    total: int = 0
    total_bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0            # already in the bucket
    skipped_bytes: int = 0
    vanished: list[str] = field(default_factory=list)     # deleted by Moodle during the run (trash): fine
    corrupt: list[str] = field(default_factory=list)      # on-disk content does not match its name
    seconds: float = 0.0


def bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn over items on `workers` threads with at most 4 x workers items in
    flight: memory stays flat however many blobs there are (an executor's map()
    would submit them all at once)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[Future[Any]] = set()
        for item in items:
            pending.add(pool.submit(fn, item))
            if len(pending) >= workers * 4:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        for fut in pending:
            yield fut.result()


def _read_verified(path: Path, sha1: str) -> bytes | None:
    """The file's bytes if their sha1 is the name, None if not (a corrupt pool file)."""
    data = path.read_bytes()
    return data if hashlib.sha1(data).hexdigest() == sha1 else None


def _upload_large(s3: Any, cfg: BackupConfig, path: Path, key: str, sha1: str) -> bool:
    """Multipart, verifying sha1 while streaming; aborted if the content is not what its name says."""
    up = s3.create_multipart_upload(Bucket=cfg.bucket, Key=key, ServerSideEncryption=cfg.sse,
                                    ChecksumAlgorithm="SHA256", Metadata={"sha1": sha1})
    h = hashlib.sha1()
    parts = []
    try:
        with open(path, "rb") as fh:
            n = 0
            while data := fh.read(cfg.part_size):
                n += 1
                h.update(data)
                digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
                r = s3.upload_part(Bucket=cfg.bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=data,
                                   ChecksumAlgorithm="SHA256", ChecksumSHA256=digest)
                parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": digest})
        if h.hexdigest() != sha1:
            s3.abort_multipart_upload(Bucket=cfg.bucket, Key=key, UploadId=up["UploadId"])
            return False
        s3.complete_multipart_upload(Bucket=cfg.bucket, Key=key, UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": parts})
        return True
    except BaseException:
        s3.abort_multipart_upload(Bucket=cfg.bucket, Key=key, UploadId=up["UploadId"])
        raise


def upload_missing(s3: Any, cfg: BackupConfig, filedir: Path, local: dict[str, int],
                   remote: dict[str, int], trashdir: Path | None = None) -> BlobReport:
    """Send every local blob the bucket lacks (or holds with another size)."""
    todo = [(h, s) for h, s in local.items() if remote.get(h) != s]
    rep = send_blobs(s3, cfg, filedir, todo, count=len(todo), nbytes=sum(s for _, s in todo), trashdir=trashdir)
    rep.total, rep.total_bytes = len(local), sum(local.values())
    rep.skipped = rep.total - len(todo)
    rep.skipped_bytes = rep.total_bytes - sum(s for _, s in todo)
    return rep


def send_blobs(s3: Any, cfg: BackupConfig, filedir: Path, todo: Iterable[tuple[str, int]], *, count: int,
               nbytes: int, trashdir: Path | None = None,
               on_sent: Callable[[str, int], None] | None = None) -> BlobReport:
    """Send the (sha1, size) blobs of `todo` (streamed: a bounded number in
    flight). A blob gone from filedir meanwhile is looked for in trashdir (where
    Moodle moves deleted content) before it counts as vanished. `on_sent` is
    called, in the caller's thread, for each blob stored."""
    rep = BlobReport()
    progress = Progress("filedir blobs", nbytes, count)

    def send(path: Path, sha1: str, size: int) -> bool:
        key = blob_key(cfg, sha1)
        if size > cfg.part_size:
            return _upload_large(s3, cfg, path, key, sha1)
        data = _read_verified(path, sha1)
        if data is None:
            return False
        s3.put_object(Bucket=cfg.bucket, Key=key, Body=data, ServerSideEncryption=cfg.sse,
                      ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                      Metadata={"sha1": sha1})
        return True

    def one(item: tuple[str, int]) -> tuple[str, str, int]:
        sha1, size = item
        places = [filedir] + ([trashdir] if trashdir is not None else [])
        for place in places:
            try:
                ok = send(local_path(place, sha1), sha1, size)
            except FileNotFoundError:
                continue
            progress.add(size, 1)
            return sha1, "uploaded" if ok else "corrupt", size
        return sha1, "vanished", 0

    for sha1, outcome, size in bounded_map(one, todo, cfg.workers):
        if outcome == "uploaded":
            rep.uploaded += 1
            rep.uploaded_bytes += size
            if on_sent is not None:
                on_sent(sha1, size)
        elif outcome == "vanished":
            rep.vanished.append(sha1)
        else:
            rep.corrupt.append(sha1)
    rep.seconds = progress.elapsed()
    return rep


@dataclass
class FetchReport:
    fetched: int = 0
    fetched_bytes: int = 0
    present: int = 0           # already on disk with the right content
    seconds: float = 0.0


def fetch_blobs(s3: Any, cfg: BackupConfig, filedir: Path, needed: Iterable[str], *, uid: int, gid: int,
                file_mode: int, dir_mode: int) -> FetchReport:
    """Put every needed blob in filedir, verifying each sha1. Raises BackupError
    naming the first object whose content is not what its key says."""
    needed = sorted(set(needed))
    rep = FetchReport()
    todo = []
    for sha1 in needed:
        path = local_path(filedir, sha1)
        if path.is_file() and _read_verified(path, sha1) is not None:
            rep.present += 1
        else:
            todo.append(sha1)
    progress = Progress("restore blobs", 0, len(todo))

    def one(sha1: str) -> int:
        key = blob_key(cfg, sha1)
        body = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"]
        h = hashlib.sha1()
        path = local_path(filedir, sha1)
        for d in (path.parent.parent, path.parent):
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                os.chown(d, uid, gid)
                os.chmod(d, dir_mode)
        tmp = path.with_name(sha1 + ".moodleops-restore")
        size = 0
        with open(tmp, "wb") as out:
            while chunk := body.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if h.hexdigest() != sha1:
            tmp.unlink()
            raise BackupError(f"s3://{cfg.bucket}/{key} is corrupted: its content has sha1 {h.hexdigest()}, "
                              f"not {sha1} (restore stopped; restore an older manifest or repair the object)")
        os.chown(tmp, uid, gid)
        os.chmod(tmp, file_mode)
        os.replace(tmp, path)
        progress.add(size, 1)
        return size

    for size in bounded_map(one, todo, cfg.workers):
        rep.fetched += 1
        rep.fetched_bytes += size
    rep.seconds = progress.elapsed()
    return rep
