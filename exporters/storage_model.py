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
USERS = "users"            # user contexts (private files...), drafts and attributable backups excluded
DRAFT = "draft"            # component user, filearea draft: transient copies, never an owner
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
    name: str = ""                # the category's name in the inventory ("" : not checked)


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


#: Where an account's type is read: a custom profile field, or a standard user field.
TYPE_SOURCES = ("profile_field", "department", "institution", "auth", "idnumber")


@dataclass(frozen=True)
class AccountPolicy:
    method: str                   # cohort | profile_field | category_enrolments (moodleops.membership)
    membership_field: str         # profile field holding the school code (method profile_field)
    type_field: str               # profile field telling hosted from student accounts
    hosted_types: tuple[str, ...]
    hosted_expiry_month: int
    hosted_expiry_day: int
    # profile_field: the custom field `type_field`, hosted if its value is in hosted_types;
    # department | institution | auth: that user column, hosted if in hosted_types;
    # idnumber: hosted if the user's idnumber matches `hosted_pattern` (a regular expression).
    type_source: str = "profile_field"
    hosted_pattern: str = ""

    def __post_init__(self) -> None:
        if self.type_source not in TYPE_SOURCES:
            raise ValueError(f"account type source {self.type_source!r} is not one of {', '.join(TYPE_SOURCES)}")
        if self.type_source == "idnumber" and not self.hosted_pattern:
            raise ValueError("account type source idnumber needs a hosted_pattern")

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
    # A filesystem call (listing, stat, statvfs) that takes longer than this makes the
    # walk "stuck": it is abandoned and reported, never waited on for ever (hung NFS).
    fs_call_timeout_s: float = 120.0
    # Incremental walk: what the last walk saw per ab/cd directory (None: always full).
    walk_state: Path | None = None
    full_walk: bool = True


@dataclass
class BucketStats:
    """docs/storage.md defines these figures; drafts are never an owner of a content
    another bucket also uses, so the draft bucket's exclusive and apportioned bytes
    are the contents reachable only through drafts."""

    files: int = 0                # rows with stored content (filesize > 0, not an external reference)
    logical_bytes: int = 0        # sum of filesize over those rows
    unique_bytes: int = 0         # distinct contents of the bucket
    exclusive_bytes: int = 0      # contents no other owner references (freed if the bucket were emptied)
    apportioned_bytes: int = 0    # each content split evenly between its owners
    external_refs: int = 0        # aliases to external repositories: no stored bytes
    external_claimed_bytes: int = 0   # the sizes those rows claim (not in the pool)


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
    incremental: bool = False     # only changed ab/cd directories were listed
    dirs_listed: int = 0          # ab/cd directories listed (the rest came from the last walk)
    dirs_reused: int = 0


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
    fs_path: str = ""             # the path whose filesystem the fs_* figures are (filedir)


@dataclass
class CategoryNote:
    id: int
    idnumber: str
    name: str


#: What can be wrong with a school's category (label `problem`, bounded).
CATEGORY_PROBLEMS = ("missing", "moved", "renamed")


@dataclass
class CategoryProblem:
    school: str
    problem: str                  # one of CATEGORY_PROBLEMS
    detail: str                   # one line for people


@dataclass
class BackupFile:
    """A course backup Moodle can tie to its course (the file name carries the course id)."""

    school: str                   # "" : the course is gone or in no school
    course_id: int
    where: str                    # user_backup_area | automated_dir
    name: str
    size: int


@dataclass
class ScanResult:
    started_at: float             # unix time of the snapshot
    duration_s: float
    buckets: dict[tuple[str, str], BucketStats]    # (bucket, school code or "")
    pool: PoolStats
    accounts: dict[str, AccountStats]              # school code -> accounts
    hosted_expiry: date
    db_duration_s: float = 0.0    # the database part (the transaction), before the disk part
    disk_at: float = 0.0          # unix time the disk part (filesystem, side dirs, walk) ended; 0: not yet
    unmapped_categories: list[CategoryNote] = field(default_factory=list)
    missing_schools: list[str] = field(default_factory=list)   # codes whose category is not in Moodle
    category_problems: list[CategoryProblem] = field(default_factory=list)
    backups: list[BackupFile] = field(default_factory=list)
    inconsistent_hashes: int = 0  # one contenthash with several sizes: should be 0
    warnings: list[str] = field(default_factory=list)

    def bucket(self, bucket: str, school: str = "") -> BucketStats:
        return self.buckets.get((bucket, school), BucketStats())

    def school(self, code: str) -> BucketStats:
        return self.bucket(SCHOOL, code)
