"""Build the health and abuse exporter's configuration from the inventory."""

from __future__ import annotations

from moodleops.exporters.storage_config import account_policy, ro_target, schools_of
from moodleops.exporters.watch_exporter import Thresholds
from moodleops.exporters.watch_model import PinSpec, WatchConfig

from moodleops.inventory import Inventory
from moodleops.site import Site


def watch_config(inv: Inventory, site: Site, *, fpm_status_url: str = "") -> WatchConfig:
    """fpm_status_url: php-fpm's status page as nginx serves it to monitoring hosts (the
    monitoring role passes it: moodle_wwwroot + php_fpm_status_path); empty: not read."""
    w = inv.platform.watch
    return WatchConfig(db=ro_target(site), schools=schools_of(inv), membership=account_policy(inv),
                       pins=(PinSpec("core", inv.core.version_text),
                             *(PinSpec(p.component, p.version_text) for p in inv.plugins)),
                       dataroot=site.dataroot, top_senders=w.top_senders, online_window_s=w.online_window_seconds,
                       watched_roles=w.watched_roles, fpm_status_url=fpm_status_url)


def thresholds(inv: Inventory) -> Thresholds:
    w = inv.platform.watch
    return Thresholds(mass_mailing_per_hour=w.mass_mailing_per_hour,
                      failed_logins_burst_10m=w.failed_logins_burst_10m,
                      cron_stuck_seconds=w.cron_stuck_seconds, pin_grace_days=w.pin_grace_days)
