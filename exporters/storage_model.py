"""What a storage scan needs (ScanConfig) and what it finds (ScanResult).

Plain data: the scanner fills it, the Prometheus collector, the CLI report and
the tests read it. Nothing here talks to a database or a disk."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

#: Bucket names. A school's files are in bucket "school" with label school=<code>;
#: every other bucket has an empty school label. Bounded: ~20 schools + 6 buckets.
SCHOOL = "school"
USERS = "users"            # user contexts (private files, user backups), drafts excluded
DRAFT = "draft"            # component user, filearea draft: transient, purged after 4 days
SYSTEM = "system"          # the system context (H5P libraries, site-level question banks...)
SITE = "site"              # front page course and site-level blocks (depth-2, not category/user)
ORPHAN_CONTEXT = "orphan_context"   # the file's context row is gone (purged daily by Moodle cron)
UNMAPPED = "unmapped"      # a top-level category that no school of the inventory claims
BUCKETS = (SCHOOL, USERS, DRAFT, SYSTEM, SITE, ORPHAN_CONTEXT, UNMAPPED)

_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,20}$")


@dataclass(frozen=True)
class SchoolSpec:
    """One school as the scanner sees it: a parameter, so tests can scan temporary schools."""

    code: str
    category_idnumber: str
    cohort_idnumber: str
    alert_bytes: int


@dataclass(frozen=True)
class DbTarget:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    prefix: str                   # Moodle's $CFG->prefix, e.g. mdl_

    def __post_init__(self) -> None:
        # The prefix is spliced into SQL text (table names cannot be parameters).
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"table prefix {self.prefix!r} is not valid (lowercase letters, digits, _)")

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class StoragePaths:
    """Moodle's data directories; filedir and trashdir may be relocated in config.php."""

    dataroot: Path
    filedir: Path
    trashdir: Path
    tempdir: Path
    cachedir: Path
    localcachedir: Path
    backuptempdir: Path

    @classmethod
    def defaults(cls, dataroot: Path) -> StoragePaths:
        """Moodle's defaults (lib/setup.php, file_system_filedir.php) for a dataroot."""
        return cls(dataroot=dataroot, filedir=dataroot / "filedir", trashdir=dataroot / "trashdir",
                   tempdir=dataroot / "temp", cachedir=dataroot / "cache",
                   localcachedir=dataroot / "localcache", backuptempdir=dataroot / "temp" / "backup")

    def side_dirs(self) -> dict[str, Path]:
        """Directories outside filedir whose size is reported (label: dir)."""
        return {"trash": self.trashdir, "temp": self.tempdir, "backup_temp": self.backuptempdir,
                "cache": self.cachedir, "localcache": self.localcachedir}


@dataclass(frozen=True)
class AccountPolicy:
    method: str                   # cohort | profile_field | category_enrolments (moodleops.membership)
    membership_field: str         # profile field holding the school code (method profile_field)
    type_field: str               # profile field telling hosted from student accounts
    hosted_types: tuple[str, ...]
    hosted_expiry_month: int
    hosted_expiry_day: int

    def next_expiry(self, today: date) -> date:
        """The next hosted-account expiry date strictly after `today` (31 August)."""
        this_year = date(today.year, self.hosted_expiry_month, self.hosted_expiry_day)
        return this_year if this_year > today else date(today.year + 1, self.hosted_expiry_month,
                                                        self.hosted_expiry_day)


@dataclass(frozen=True)
class ScanConfig:
    db: DbTarget
    schools: tuple[SchoolSpec, ...]
    paths: StoragePaths
    pool_bytes: int
    accounts: AccountPolicy
    statement_timeout_s: float = 600.0
    connect_timeout_s: int = 5
    work_mem: str = "64MB"
    # Blobs written less than this long before the scan may still lack their row
    # (Moodle writes content before inserting the row): never call them orphans.
    orphan_margin_s: float = 3600.0
    walk_filedir: bool = True


@dataclass
class BucketStats:
    files: int = 0                # rows with filesize > 0
    logical_bytes: int = 0        # sum of filesize over rows
    unique_bytes: int = 0         # distinct contenthashes of the bucket
    exclusive_bytes: int = 0      # content no other bucket references
    apportioned_bytes: int = 0    # each blob split evenly between the buckets that use it


@dataclass
class AccountStats:
    active: int = 0
    suspended: int = 0
    hosted_expiring: int | None = None   # None: the account-type profile field does not exist


@dataclass
class FiledirStats:
    """The filedir walk merged with the database's hashes."""

    blobs: int = 0
    bytes: int = 0                # apparent size of every hash-named blob on disk
    orphan_blobs: int = 0         # on disk, no row (older than the margin)
    orphan_bytes: int = 0
    recent_unreferenced: int = 0  # no row yet but too young to judge
    missing_blobs: int = 0        # row, nothing on disk nor in trashdir
    missing_bytes: int = 0
    missing_in_trash: int = 0     # row, content only in trashdir (recoverable, or deleted after the snapshot)
    errors: list[str] = field(default_factory=list)   # entries that could not be read


@dataclass
class PoolStats:
    pool_bytes: int               # the agreement's pool (inventory)
    fs_capacity_bytes: int | None = None
    fs_used_bytes: int | None = None
    fs_available_bytes: int | None = None
    distinct_bytes: int = 0       # sum over distinct contenthashes referenced by rows
    distinct_blobs: int = 0
    dir_bytes: dict[str, int] = field(default_factory=dict)     # trash, temp, cache...
    filedir: FiledirStats | None = None                          # None when the walk did not run


@dataclass
class CategoryNote:
    id: int
    idnumber: str
    name: str


@dataclass
class ScanResult:
    started_at: float             # unix time of the snapshot
    duration_s: float
    buckets: dict[tuple[str, str], BucketStats]    # (bucket, school code or "")
    pool: PoolStats
    accounts: dict[str, AccountStats]              # school code -> accounts
    hosted_expiry: date
    unmapped_categories: list[CategoryNote] = field(default_factory=list)
    missing_schools: list[str] = field(default_factory=list)   # codes whose category is not in Moodle
    inconsistent_hashes: int = 0  # one contenthash with several sizes: should be 0
    warnings: list[str] = field(default_factory=list)

    def bucket(self, bucket: str, school: str = "") -> BucketStats:
        return self.buckets.get((bucket, school), BucketStats())

    def school(self, code: str) -> BucketStats:
        return self.bucket(SCHOOL, code)
