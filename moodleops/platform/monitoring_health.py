"""Is the monitoring of this stack working: the storage exporter answers and
Prometheus scrapes it. Part of `platform status`; ports and address are the
monitoring role's variables as Ansible computes them (moodleops.platform.ansible_view)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory
from moodleops.platform.ansible_view import role_vars

ROLE_DEFAULTS = REPO_ROOT / "playbooks" / "roles" / "monitoring" / "defaults" / "main.yml"
EXPORTER_JOB = "moodle_storage"     # the job name the alert rules use
TIMEOUT_S = 3.0                     # status must stay quick even when a daemon hangs


@dataclass(frozen=True)
class MonitoringEndpoints:
    exporter: str       # http://host:port
    prometheus: str


def monitoring_settings(inv: Inventory) -> dict[str, Any]:
    """The monitoring role's variables (monitoring_*) as the playbook sees them."""
    return role_vars(inv, "monitoring", "monitoring", "monitoring_")


def endpoints(inv: Inventory) -> MonitoringEndpoints:
    merged = role_vars(inv, "monitoring", "monitoring",
                       ("monitoring_listen_address", "monitoring_exporter_port", "monitoring_prometheus_port"))
    host = str(merged["monitoring_listen_address"])
    host = f"[{host}]" if ":" in host else host
    return MonitoringEndpoints(exporter=f"http://{host}:{int(merged['monitoring_exporter_port'])}",
                               prometheus=f"http://{host}:{int(merged['monitoring_prometheus_port'])}")


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


def check_monitoring(ep: MonitoringEndpoints) -> tuple[list[str], list[str], list[str]]:
    """(report lines, problems, warnings)."""
    lines: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    try:
        resp = requests.get(f"{ep.exporter}/metrics", timeout=TIMEOUT_S)
        resp.raise_for_status()
        stale = _sample(resp.text, "moodleops_exporter_stale")
        up = _sample(resp.text, "moodleops_exporter_up")
        lines.append(f"  Exporter {ep.exporter}/metrics answers (scan up={up:g}, stale={stale:g})"
                     if up is not None and stale is not None
                     else f"  Exporter {ep.exporter}/metrics answers")
        if up is None:
            problems.append(f"{ep.exporter}/metrics answers without the storage exporter's metrics")
        elif stale:
            warnings.append("storage exporter data is stale: its last scans failed (see its log)")
    except requests.RequestException as exc:
        lines.append(f"  Exporter {ep.exporter}/metrics NOT answering")
        problems.append(f"storage exporter at {ep.exporter} not answering: {type(exc).__name__}")
    try:
        resp = requests.get(f"{ep.prometheus}/api/v1/targets", params={"state": "active"}, timeout=TIMEOUT_S)
        resp.raise_for_status()
        targets = [t for t in resp.json()["data"]["activeTargets"]
                   if t.get("labels", {}).get("job") == EXPORTER_JOB]
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        lines.append(f"  Prometheus {ep.prometheus} NOT answering")
        problems.append(f"Prometheus at {ep.prometheus} not answering: {type(exc).__name__}")
        return lines, problems, warnings
    if not targets:
        lines.append(f"  Prometheus {ep.prometheus}: no '{EXPORTER_JOB}' target")
        problems.append(f"Prometheus does not scrape the storage exporter (no job '{EXPORTER_JOB}')")
        return lines, problems, warnings
    health = {t.get("scrapeUrl", "?"): t.get("health", "unknown") for t in targets}
    lines.append(f"  Prometheus {ep.prometheus}: job {EXPORTER_JOB} "
                 + ", ".join(f"{url} {h}" for url, h in health.items()))
    for url, h in health.items():
        if h == "down":
            err = next((t.get("lastError", "") for t in targets if t.get("scrapeUrl") == url), "")
            problems.append(f"Prometheus cannot scrape {url}: {err or 'down'}")
        elif h != "up":
            warnings.append(f"Prometheus has not scraped {url} yet")
    return lines, problems, warnings
