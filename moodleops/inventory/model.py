"""Typed view of the inventory. Built only by `moodleops.inventory.load_inventory`,
which validates everything first: code that receives these objects can trust them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

from moodleops.inventory.addresses import is_loopback
from moodleops.inventory.errors import InventoryError


@dataclass(frozen=True)
class School:
    code: str                     # stable key: metric label, CLI argument
    name: str
    category_idnumber: str        # idnumber of the top-level course category in Moodle
    cohort_idnumber: str          # cohort holding the school's users (defaults to category_idnumber)
    students: int
    trainers: int
    referents: tuple[str, ...]    # role mailboxes that get the school's storage alerts
    alert_bytes: int              # storage alert threshold for this school


@dataclass(frozen=True)
class MonthDay:
    month: int
    day: int

    def in_year(self, year: int) -> date:
        return date(year, self.month, self.day)


@dataclass(frozen=True)
class AccountRules:
    login_pattern: str
    hosted_expiry: MonthDay
    renewal_window: tuple[MonthDay, MonthDay]
    trainer_renewal_window: tuple[MonthDay, MonthDay]
    new_account_sla_days: int
    referents_min: int
    referents_max: int
    account_type_field: str
    hosted_types: tuple[str, ...]
    student_types: tuple[str, ...]
    # Where the storage exporter reads the type: the custom profile field above, or a
    # standard user field (department, institution, auth: value in hosted_types; idnumber:
    # matches hosted_pattern).
    account_type_source: str = "profile_field"
    hosted_pattern: str = ""


@dataclass(frozen=True)
class WatchRules:
    """platform.yml `watch`: thresholds of the health and abuse exporter and its alerts."""

    mass_mailing_per_hour: int
    failed_logins_burst_10m: int
    cron_stuck_seconds: int
    pin_grace_days: int
    top_senders: int
    online_window_seconds: int
    watched_roles: tuple[str, ...]


@dataclass(frozen=True)
class Platform:
    agreement_start: date
    agreement_end: date
    pool_bytes: int
    default_school_alert_bytes: int
    pool_warning_ratio: float
    pool_critical_ratio: float
    rate_eur_per_student: Decimal
    billing_count_due: MonthDay
    billing_campaign_end: MonthDay
    accounts: AccountRules
    membership_method: str        # cohort | profile_field | category_enrolments
    membership_profile_field: str
    population_as_of: date
    watch: WatchRules


@dataclass(frozen=True)
class Pin:
    """One pinned archive: Moodle core or an add-on plugin."""

    component: str                # 'core' or frankenstyle, e.g. mod_choicegroup
    version: Decimal              # Moodle version number (YYYYMMDDXX[.XX])
    version_text: str             # exactly as written in the inventory, for display and Moodle comparison
    release: str
    install_path: str             # '.' for core, else relative to the Moodle root (mod/choicegroup)
    requires: Decimal | None      # minimum core version (plugins)
    dependencies: dict[str, Decimal]
    file: str                     # archive file name in the mirror
    sha256: str
    url: str                      # upstream download URL
    contract_name: str = ""
    secrets: tuple[str, ...] = () # 'plugin/setting' names that need an API key


@dataclass(frozen=True)
class Host:
    name: str
    address: str                  # ansible_host, or the name itself
    groups: tuple[str, ...]
    port: int | None = None       # ansible_port (SSH), when the host sets it
    connection: str = ""          # ansible_connection as written: "local", "ssh" or "" (Ansible's default)

    @property
    def ssh_address(self) -> str:
        """Where SSH reaches it, as the fault lines name it (host:port)."""
        return f"{self.address}:{self.port or 22}"


@dataclass(frozen=True)
class Settings:
    """Platform-wide values of one environment: inventory/<env>/group_vars/all.yml
    over the defaults of moodleops.inventory.settings. The playbooks get them
    through the vars plugin (playbooks/vars_plugins/), under the names in
    settings.SETTINGS; Python reads them here. Never Jinja templates."""

    env_name: str                 # moodleops_env
    wwwroot: str                  # moodle_wwwroot, without trailing slash
    ca_bundle: Path | None        # moodle_ca_bundle: what the operator trusts for it (None: the system's)
    php_version: str
    db_host: str
    db_read_host: str             # moodle_db_read_host: where measurements read
    db_port: int
    db_name: str
    db_user: str
    db_prefix: str
    db_ro_user: str
    base_dir: Path
    releases_dir: Path
    current_link: Path
    dataroot: Path
    web_user: str
    web_group: str
    lib_dir: Path                 # moodleops_lib_dir: PHP helpers installed by the playbooks
    state_dir: Path               # moodleops_state_dir: journals, locks, run records
    local_secrets_dir: Path | None   # generated secrets of a test stack; None in production
    artifact_source: str          # mirror | upstream
    artifact_mirror: Path | None  # directory of the pinned archives (source mirror)
    allow_unsupported_php: bool
    admin_user: str
    php_fpm_max_children: int
    monitoring_enabled: bool


@dataclass(frozen=True)
class Inventory:
    root: Path                    # the inventory/ directory
    env: str                      # inventory name: local, production, ...
    env_dir: Path                 # inventory/<env>/
    platform: Platform
    schools: tuple[School, ...]
    core: Pin
    plugins: tuple[Pin, ...]
    hosts: tuple[Host, ...]
    settings: Settings
    # group_vars/all.yml of the env as written: role knobs that only Ansible
    # renders. Python reads plain values of an area it validates itself (backup_*).
    vars: dict[str, object] = field(default_factory=dict)

    def school(self, code: str) -> School:
        for s in self.schools:
            if s.code == code:
                return s
        allowed = ", ".join(s.code for s in self.schools)
        raise InventoryError(str(self.root / "schools.yml"), "code", code, f"one of: {allowed}")

    def group(self, name: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if name in h.groups)

    @property
    def is_loopback_only(self) -> bool:
        """True when every host is on this machine (the only kind of target load tests accept)."""
        return all(is_loopback(h.address) for h in self.hosts)
