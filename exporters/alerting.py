"""Alertmanager configuration generated from the inventory: a school's storage
alerts go to that school's referents, pool and exporter alerts to the UT
sysadmins; security alerts (mass mailing, failed-login bursts: scope=security)
go to the sysadmins, who hold the runbooks, and to the school's referents. Generated, not hand-written, so that a new school or a changed
referent is an inventory change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moodleops.inventory import Inventory

SYSADMINS = "sysadmins"


@dataclass(frozen=True)
class Delivery:
    """E-mail (production) or webhooks (tests: a local receiver stands in for mail)."""

    smtp_smarthost: str = ""
    smtp_from: str = ""
    webhook_base: str = ""        # http://127.0.0.1:PORT -> receiver R posts to <base>/R
    # Alertmanager refuses a relay that offers no STARTTLS unless told otherwise
    # (the rehearsal's relay on the monitoring host's loopback has no TLS).
    smtp_require_tls: bool = True

    def __post_init__(self) -> None:
        if not self.webhook_base and not (self.smtp_smarthost and self.smtp_from):
            raise ValueError("alert delivery needs --smtp-smarthost and --smtp-from, or --webhook URL")


def receiver_of(code: str) -> str:
    return f"school-{code}"


def _receiver(name: str, to: Sequence[str], delivery: Delivery) -> dict[str, Any]:
    if delivery.webhook_base:
        return {"name": name, "webhook_configs": [{"url": f"{delivery.webhook_base.rstrip('/')}/{name}",
                                                   "send_resolved": True}]}
    return {"name": name, "email_configs": [{"to": ", ".join(to), "send_resolved": True}]}


def alertmanager_config(inv: Inventory, sysadmins: Sequence[str], delivery: Delivery, *,
                        group_wait: str = "30s", repeat_interval: str = "24h") -> dict[str, Any]:
    if not sysadmins:
        raise ValueError("no sysadmin address: pool and exporter alerts would go nowhere")
    # The sysadmins' copy of a security alert first, then on to the school's route.
    security = {"receiver": SYSADMINS, "matchers": ['scope="security"'],
                "group_by": ["alertname", "school", "username"], "continue": True}
    routes = [security, *({"receiver": receiver_of(s.code), "matchers": ['scope=~"school|security"',
                                                                        f'school="{s.code}"'],
                           "group_by": ["alertname", "school"], "continue": False}
                          for s in inv.schools)]
    cfg: dict[str, Any] = {
        "route": {"receiver": SYSADMINS, "group_by": ["alertname", "instance"], "group_wait": group_wait,
                  "group_interval": "5m", "repeat_interval": repeat_interval, "routes": routes},
        "receivers": [_receiver(SYSADMINS, sysadmins, delivery),
                      *(_receiver(receiver_of(s.code), s.referents, delivery) for s in inv.schools)],
        # The critical pool alert makes the warning one redundant.
        "inhibit_rules": [{"source_matchers": ['alertname="MoodleStoragePoolAboveCritical"'],
                           "target_matchers": ['alertname="MoodleStoragePoolAboveWarning"'],
                           "equal": ["instance"]}],
    }
    if not delivery.webhook_base:
        cfg["global"] = {"smtp_smarthost": delivery.smtp_smarthost, "smtp_from": delivery.smtp_from,
                         "smtp_require_tls": delivery.smtp_require_tls}
    return cfg
