"""The users or schools of a firing alert, from Alertmanager's API, as a runbook's scope.

`moodleops incident messaging suspend --users-from-alert MoodleMassMailingByUser`
takes the `username` label of every alert of that name Alertmanager holds as
active (not silenced, not inhibited, not resolved);
`moodleops incident suspend --school-from-alert MoodleFailedLoginBurst` takes
their `school` label. The runbook itself stays as always: a dry run first,
--apply to act."""

from __future__ import annotations

import re
from typing import Any

import requests

from moodleops.errors import AlertmanagerError
from moodleops.exporters.watch_model import NO_SCHOOL, PLATFORM, UNKNOWN_USER
from moodleops.faults import http_error
from moodleops.incident.errors import IncidentError
from moodleops.inventory import Inventory

ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TIMEOUT_S = 10.0
CHECK = ("that Alertmanager runs there (supervisorctl status prometheus-alertmanager), "
         "monitoring_alertmanager_port of the inventory, or pass --alertmanager URL")
NOTHING_DONE = "nothing was planned or changed"


def alertmanager_url(inv: Inventory) -> str:
    """Alertmanager as the monitoring role installs it (its defaults, then the inventory)."""
    from moodleops.platform.monitoring_health import monitoring_settings

    s = monitoring_settings(inv)
    host = str(s["monitoring_listen_address"])
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{int(s['monitoring_alertmanager_port'])}"


# School labels the watch exporter gives to what belongs to no school: never a scope.
NOT_SCHOOLS = frozenset({NO_SCHOOL, UNKNOWN_USER, PLATFORM})


def firing_alerts(base_url: str, alertname: str, option: str = "--users-from-alert") -> list[dict[str, Any]]:
    if not ALERT_NAME.match(alertname):
        raise IncidentError(f"{option} {alertname!r}: not an alert name (letters, digits, _)")
    url = f"{base_url.rstrip('/')}/api/v2/alerts"
    try:
        resp = requests.get(url, params={"filter": f'alertname="{alertname}"', "active": "true",
                                         "silenced": "false", "inhibited": "false", "unprocessed": "false"},
                            timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise http_error(AlertmanagerError, base_url, exc, check=CHECK, done=NOTHING_DONE) from None
    if resp.status_code >= 400:
        raise http_error(AlertmanagerError, base_url, status=resp.status_code,
                         check="Alertmanager's log (supervisorctl tail prometheus-alertmanager)", done=NOTHING_DONE)
    try:
        alerts = resp.json()
    except ValueError:
        raise AlertmanagerError(base_url, f"{url} answered something that is not JSON",
                                "that the URL is Alertmanager's, not another service's", done=NOTHING_DONE) from None
    if not isinstance(alerts, list):
        raise AlertmanagerError(base_url, f"{url} answered an unexpected document (expected a list)",
                                "that the URL is Alertmanager's (API v2)", done=NOTHING_DONE)
    return [a for a in alerts if isinstance(a, dict) and a.get("status", {}).get("state") == "active"]


def users_of_alert(base_url: str, alertname: str) -> list[str]:
    """Usernames of the alert's active instances, sorted; an error when there are none."""
    alerts = firing_alerts(base_url, alertname)
    names = sorted({str(a["labels"]["username"]) for a in alerts
                    if isinstance(a.get("labels"), dict) and a["labels"].get("username")})
    if not names:
        what = "no active alert" if not alerts else "active alerts, but none with a username label"
        raise IncidentError(f"--users-from-alert {alertname}: {what} in Alertmanager at {base_url} "
                            "(nothing to do; give --users instead)")
    return names


def schools_of_alert(base_url: str, alertname: str, known: set[str]) -> tuple[list[str], list[str]]:
    """(school codes of the alert's active instances, sorted; the labels left out because
    they name no school: none, unknown, platform). An error when no school is left, or
    when a label is not a school of the inventory (wrong inventory for this Alertmanager?)."""
    option = "--school-from-alert"
    alerts = firing_alerts(base_url, alertname, option)
    labels = {str(a["labels"]["school"]) for a in alerts
              if isinstance(a.get("labels"), dict) and a["labels"].get("school")}
    left_out = sorted(labels & NOT_SCHOOLS)
    codes = sorted(labels - NOT_SCHOOLS)
    strangers = [c for c in codes if c not in known]
    if strangers:
        raise IncidentError(f"{option} {alertname}: school label {', '.join(strangers)} is not a school of "
                            "this inventory (check --inventory, or give --school)")
    if not codes:
        what = ("no active alert" if not alerts else "active alerts, but none with a school label" if not labels
                else f"active alerts, but only for {', '.join(left_out)} (no school to suspend)")
        raise IncidentError(f"{option} {alertname}: {what} in Alertmanager at {base_url} "
                            "(nothing to do; give --school or --users instead)")
    return codes, left_out
