"""Build a ScanConfig from the inventory (the single source of truth)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from moodleops.exporters.storage_model import (
    AccountPolicy,
    DbTarget,
    ScanConfig,
    SchoolSpec,
    StoragePaths,
)

from moodleops.errors import UsageError
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.site import Site


def schools_of(inv: Inventory) -> tuple[SchoolSpec, ...]:
    return tuple(SchoolSpec(code=s.code, category_idnumber=s.category_idnumber,
                            cohort_idnumber=s.cohort_idnumber, alert_bytes=s.alert_bytes, name=s.name)
                 for s in inv.schools)


def ro_target(site: Site) -> DbTarget:
    return DbTarget(host=site.db_read_host, port=site.db_port, dbname=site.db_name, user=site.db_ro_user,
                    password=site.secret("db_ro_password"), prefix=site.db_prefix)


def moodle_paths(site: Site) -> tuple[StoragePaths, list[str]]:
    """Data directories as Moodle resolves them (a relocated filedir included),
    through the storage_paths helper; Moodle's defaults under the inventory's
    dataroot when Moodle cannot be asked (e.g. the exporter on a host without PHP)."""
    got, notes = ask_paths(site)
    if got is None:
        return StoragePaths.defaults(site.dataroot), notes
    return got, notes


def paths_source(site: Site) -> Callable[[], StoragePaths | None]:
    """Asks Moodle for its data paths again (None while it still cannot answer)."""
    return lambda: ask_paths(site)[0]


def ask_paths(site: Site) -> tuple[StoragePaths | None, list[str]]:
    """Moodle's answer, or None (with a note) when it cannot be asked now."""
    notes: list[str] = []
    if not site.moodle_here:
        # A monitoring host: moodledata is mounted here, Moodle's code is not.
        notes.append(f"Moodle is not on this host (its web nodes: {', '.join(site.web_nodes)}): "
                     f"using the defaults under {site.dataroot}")
        return None, notes
    try:
        got = MoodleCLI(site).tool("storage_paths", timeout=60)
    except (MoodleError, OSError) as exc:
        notes.append(f"could not ask Moodle for its data paths ({' '.join(str(exc).split())[:200]}); "
                     f"using the defaults under {site.dataroot} until it answers")
        return None, notes
    if got.get("alternative_file_system_class"):
        notes.append(f"Moodle uses {got['alternative_file_system_class']}: filedir holds only local "
                     "objects, missing blobs are expected")
    return StoragePaths(dataroot=Path(got["dataroot"]), filedir=Path(got["filedir"]),
                        trashdir=Path(got["trashdir"]), tempdir=Path(got["tempdir"]),
                        cachedir=Path(got["cachedir"]), localcachedir=Path(got["localcachedir"]),
                        backuptempdir=Path(got["backuptempdir"])), notes


def account_policy(inv: Inventory) -> AccountPolicy:
    p = inv.platform
    return AccountPolicy(method=p.membership_method, membership_field=p.membership_profile_field,
                         type_field=p.accounts.account_type_field, hosted_types=p.accounts.hosted_types,
                         hosted_expiry_month=p.accounts.hosted_expiry.month,
                         hosted_expiry_day=p.accounts.hosted_expiry.day,
                         type_source=p.accounts.account_type_source, hosted_pattern=p.accounts.hosted_pattern)


def config_from_inventory(inv: Inventory, site: Site, *, paths: StoragePaths | None = None,
                          schools: Sequence[SchoolSpec] | None = None, db: DbTarget | None = None,
                          walk_filedir: bool = True) -> tuple[ScanConfig, list[str]]:
    notes: list[str] = []
    if paths is None:
        paths, notes = moodle_paths(site)
    cfg = ScanConfig(db=db or ro_target(site), schools=tuple(schools or schools_of(inv)), paths=paths,
                     pool_bytes=inv.platform.pool_bytes, accounts=account_policy(inv),
                     walk_filedir=walk_filedir,
                     statement_timeout_s=statement_timeout_s(inv))
    return cfg, notes


def statement_timeout_s(inv: Inventory) -> float:
    """storage_statement_timeout_s of group_vars (default 600): the longest statement a scan may run."""
    value = inv.vars.get("storage_statement_timeout_s", 600.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{inv.env_dir / 'group_vars' / 'all.yml'}: storage_statement_timeout_s: {value!r} is "
                         "not valid (a number of seconds > 0)")
    return float(value)
