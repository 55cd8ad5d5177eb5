"""Typed view of the inventory. Built only by `moodleops.inventory.load_inventory`,
which validates everything first: code that receives these objects can trust them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path


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
    vars: dict[str, object] = field(default_factory=dict)   # group_vars/all.yml of the env, raw

    def school(self, code: str) -> School:
        for s in self.schools:
            if s.code == code:
                return s
        allowed = ", ".join(s.code for s in self.schools)
        from moodleops.inventory.errors import InventoryError
        raise InventoryError(str(self.root / "schools.yml"), "code", code, f"one of: {allowed}")

    def group(self, name: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if name in h.groups)

    @property
    def is_loopback_only(self) -> bool:
        """True when every host is on this machine (the only kind of target load tests accept)."""
        from moodleops.inventory.loader import is_loopback
        return all(is_loopback(h.address) for h in self.hosts)
