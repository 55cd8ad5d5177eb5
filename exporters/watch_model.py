"""What the Moodle health and abuse reader needs (WatchConfig) and what one read
returns (WatchResult): plain data, picklable, no database handle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moodleops.exporters.storage_model import AccountPolicy, DbTarget, SchoolSpec

# Windows of the abuse figures. Fixed, because the metric names say them
# (…_1h, …_10m, …_24h): a different window would be a different metric.
MESSAGES_WINDOW_S = 3600
FAILED_LOGINS_WINDOW_S = 600
NEW_ROLES_WINDOW_S = 86400

NO_SCHOOL = "none"          # a user no school claims
UNKNOWN_USER = "unknown"    # a failed login for a username Moodle does not have
PLATFORM = "platform"       # a role assigned above every school (system context)


@dataclass(frozen=True)
class PinSpec:
    component: str          # 'core' or frankenstyle
    version: str            # as in moodle.yml


@dataclass(frozen=True)
class WatchConfig:
    db: DbTarget
    schools: tuple[SchoolSpec, ...]
    membership: AccountPolicy
    pins: tuple[PinSpec, ...]
    dataroot: Path                          # climaintenance.html lives there
    top_senders: int
    online_window_s: int
    watched_roles: tuple[str, ...]
    fpm_status_url: str = ""                # php-fpm status page (JSON); empty: not read
    connect_timeout_s: int = 10
    statement_timeout_ms: int = 60_000


@dataclass(frozen=True)
class TaskDelay:
    task: str               # scheduled task class name
    fail_delay_s: int


@dataclass(frozen=True)
class Sender:
    school: str
    username: str
    sent: int               # messages + notifications over MESSAGES_WINDOW_S


@dataclass
class WatchResult:
    read_at: float
    duration_s: float = 0.0
    cron_last_start: float | None = None
    tasks: list[TaskDelay] = field(default_factory=list)            # every enabled scheduled task
    adhoc_queued: int = 0
    adhoc_failing: int = 0
    adhoc_oldest_created: float | None = None
    sessions_active: int = 0
    online: dict[str, int] = field(default_factory=dict)               # school -> users
    maintenance_web: bool = False
    maintenance_cli: bool = False
    served_versions: dict[str, str] = field(default_factory=dict)      # component -> version served
    messages: dict[tuple[str, str], int] = field(default_factory=dict) # (school, kind) -> count
    top_senders: list[Sender] = field(default_factory=list)
    max_sender: dict[str, int] = field(default_factory=dict)           # school -> most by one user
    failed_logins: dict[tuple[str, str], int] = field(default_factory=dict)  # (school, source) -> count
    site_admins: int = 0
    new_site_admins: list[str] = field(default_factory=list)           # usernames made admin within 24 h
    new_roles: dict[tuple[str, str], int] = field(default_factory=dict)  # (role, school) -> assignments
    fpm: dict[str, float] = field(default_factory=dict)                # php-fpm status fields
    warnings: list[str] = field(default_factory=list)
