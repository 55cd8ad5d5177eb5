"""What the bucket holds, kept on the backup host so that a run does not list
the whole bucket (a million blobs is a thousand LIST pages and, held in a
dict, hundreds of MB): a SQLite file of sha1 -> size for every blob stored.

Trusted only as far as it is checked: each run HEADs a random sample of it
(`SAMPLE` blobs) and rebuilds it from a full listing when one is missing or
differs, when the file is missing, or when it is older than `max_age` (the
scheduled full check). A run adds what it uploaded. The run's own working
sets (the filedir listing, trashdir, what the dump references) live in the
same database, so memory stays flat whatever the number of blobs."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from moodleops.backup.blobs import SHA1_RE, blob_key
from moodleops.backup.config import BackupConfig

SAMPLE = 64
MAX_AGE = timedelta(days=7)
_BATCH = 5000


@dataclass
class IndexCheck:
    rebuilt: bool
    reason: str            # why it was rebuilt, or how it was verified
    blobs: int
    seconds: float


class BlobIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-16000")        # 16 MB page cache, whatever the size
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.execute("CREATE TABLE IF NOT EXISTS stored (sha1 TEXT PRIMARY KEY, size INTEGER) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")

    @classmethod
    def for_bucket(cls, state_dir: Path, cfg: BackupConfig) -> BlobIndex:
        where = hashlib.sha256(f"{cfg.endpoint_url}|{cfg.bucket}|{cfg.prefix}".encode()).hexdigest()[:12]
        return cls(state_dir / "backup" / f"index-{cfg.bucket}-{where}.sqlite")

    def close(self) -> None:
        self.db.close()

    # --- the stored blobs ---------------------------------------------------------------------

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM stored").fetchone()[0])

    def meta(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, k: str, v: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))

    def rebuilt_at(self) -> float | None:
        v = self.meta("rebuilt")
        return None if v is None else float(v)

    def rebuild(self, s3: Any, cfg: BackupConfig) -> int:
        """From one paginated listing of blobs/, page by page."""
        prefix = cfg.key("blobs", "")
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM stored")
        n = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
            rows = [(o["Key"][len(prefix):], o["Size"]) for o in page.get("Contents", [])
                    if SHA1_RE.match(o["Key"][len(prefix):])]
            self.db.executemany("INSERT OR REPLACE INTO stored VALUES (?, ?)", rows)
            n += len(rows)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('rebuilt', ?)", (str(time.time()),))
        self.db.execute("COMMIT")
        return n

    def ensure(self, s3: Any, cfg: BackupConfig, *, max_age: timedelta = MAX_AGE, sample: int = SAMPLE,
               must_rebuild: str = "") -> IndexCheck:
        started = time.monotonic()
        rebuilt_at = self.rebuilt_at()
        reason = must_rebuild
        if reason:
            pass
        elif rebuilt_at is None:
            reason = "no index yet"
        elif time.time() - rebuilt_at > max_age.total_seconds():
            reason = f"older than {max_age} (scheduled full check)"
        else:
            rows = self.db.execute("SELECT sha1, size FROM stored ORDER BY random() LIMIT ?", (sample,)).fetchall()
            for sha1, size in rows:
                try:
                    head = s3.head_object(Bucket=cfg.bucket, Key=blob_key(cfg, sha1))
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                        raise
                    reason = f"sampled blob {sha1} is not in the bucket"
                    break
                if head["ContentLength"] != size:
                    reason = f"sampled blob {sha1} has another size in the bucket"
                    break
        if reason:
            n = self.rebuild(s3, cfg)
            return IndexCheck(True, reason, n, time.monotonic() - started)
        return IndexCheck(False, f"{min(sample, self.count())} sampled blob(s) verified", self.count(),
                          time.monotonic() - started)

    def add(self, rows: Iterable[tuple[str, int]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO stored VALUES (?, ?)", rows)
        self.db.execute("COMMIT")

    def forget(self, sha1s: Iterable[str]) -> None:
        """Blobs a prune deleted."""
        self.db.execute("BEGIN")
        self.db.executemany("DELETE FROM stored WHERE sha1 = ?", ((h,) for h in sha1s))
        self.db.execute("COMMIT")

    # --- a run's working sets -----------------------------------------------------------------

    def new_set(self, name: str, sized: bool = True) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS temp.{name}")
        cols = "sha1 TEXT PRIMARY KEY, size INTEGER" if sized else "sha1 TEXT PRIMARY KEY"
        self.db.execute(f"CREATE TEMP TABLE {name} ({cols}) WITHOUT ROWID")

    def fill(self, name: str, rows: Iterable[Any], sized: bool = True) -> int:
        """Insert rows ((sha1, size) or sha1) in batches; duplicates ignored."""
        sql = f"INSERT OR IGNORE INTO temp.{name} VALUES ({'?, ?' if sized else '?'})"
        batch: list[Any] = []
        n = 0
        self.db.execute("BEGIN")
        for row in rows:
            batch.append(row if sized else (row,))
            if len(batch) >= _BATCH:
                self.db.executemany(sql, batch)
                n += len(batch)
                batch = []
        self.db.executemany(sql, batch)
        self.db.execute("COMMIT")
        return n + len(batch)

    def scalar(self, sql: str, *args: Any) -> int:
        return int(self.db.execute(sql, args).fetchone()[0] or 0)

    def pages(self, select: str, *args: Any, page: int = 2000) -> Iterator[tuple[Any, ...]]:
        """Rows of `select` (its first column a unique sha1, no ORDER BY/LIMIT of
        its own) in sha1 order, one page at a time: no statement stays open
        between pages, so the caller may write to the database meanwhile."""
        last = ""
        while True:
            batch = self.db.execute(f"SELECT * FROM ({select}) WHERE sha1 > ? ORDER BY sha1 LIMIT {page}",
                                    (*args, last)).fetchall()
            if not batch:
                return
            yield from batch
            last = batch[-1][0]
