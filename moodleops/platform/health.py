"""The health summary: what Moodle itself says it runs, compared with the pins,
plus a real HTTP login. Printed by `platform up` and `platform status`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import requests

from moodleops.errors import SshError, oneline
from moodleops.inventory import Host, Inventory
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.platform.ansible_view import AnsibleViewError
from moodleops.platform.host_access import PyinfraHostError, RemoteCommandFailed, run_moodleops
from moodleops.platform.monitoring_health import check_monitoring, endpoints
from moodleops.platform.nodes import probe_web_nodes
from moodleops.platform.upgrade_intent import interrupted_line, interrupted_upgrade
from moodleops.site import Site, SiteError
from moodleops.webclient import LoginFailed, login, trusting


@dataclass
class Health:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        out = list(self.lines)
        out += [f"  WARNING  {w}" for w in self.warnings]
        out += [f"  PROBLEM  {p}" for p in self.problems]
        out.append("  Verdict  " + ("OK" if self.ok else f"{len(self.problems)} problem(s)"))
        return "\n".join(out)


def _same_version(installed: str | None, pinned: Decimal) -> bool:
    return installed is not None and Decimal(installed) == pinned


def check_health(inv: Inventory, site: Site) -> Health:
    h = Health()
    h.lines.append(f"Moodle platform '{inv.env}' at {site.wwwroot}")
    _check_nodes(inv, site, h)
    # Moodle's CLI here would be another Moodle (or none): never read the wrong
    # site. Elsewhere the first web node's own toolkit asks its Moodle, over SSH.
    probe = _local_probe(inv, site, h) if site.moodle_here else _remote_probe(inv, h)
    # The probe reads the record; here it is read even when Moodle cannot answer
    # (a run killed half-way leaves it so).
    interrupted = probe.get("upgrade_interrupted") if probe is not None else \
        interrupted_upgrade(site.state_dir) if site.moodle_here else None
    if interrupted:
        h.problems.append(interrupted_line(interrupted))
    if probe is not None and not _check_moodle(inv, probe, h):
        return h        # not installed: there is no login to try
    if probe is None and site.moodle_here:
        return h        # this node's own Moodle cannot be read: neither can its login page
    # A node unreachable over SSH says nothing of the site: its HTTP login still gets a verdict.
    _check_login(inv, site, h)
    return h


def moodle_probe(inv: Inventory, site: Site) -> dict[str, Any]:
    """What this node's Moodle says (`platform probe`, read over SSH elsewhere),
    and whether an upgrade run was killed here (its intent record is left)."""
    answer = MoodleCLI(site).probe(*(s for p in inv.plugins for s in p.secrets))
    answer["upgrade_interrupted"] = interrupted_upgrade(site.state_dir)
    return answer


def _local_probe(inv: Inventory, site: Site, h: Health) -> dict[str, Any] | None:
    try:
        return moodle_probe(inv, site)
    except (MoodleError, OSError) as exc:
        h.problems.append(f"cannot read the site through Moodle: {exc}")
        return None


def _remote_probe(inv: Inventory, h: Health) -> dict[str, Any] | None:
    """`moodleops platform probe` on the first web node, through the toolkit
    role's launcher, over SSH as Ansible connects."""
    node = inv.group("web")[0]
    out = _ask_over_ssh(inv, node, h, "versions", "platform", "probe", timeout_s=120,
                        hint="check Moodle and the database from that node")
    if out is None:
        return None
    last = out.strip().splitlines()[-1:] or [""]
    try:
        answer: dict[str, Any] = json.loads(last[0])
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or "installed" not in answer:
        h.problems.append(f"versions not read on {node.name}: `moodleops platform probe` there: "
                          f"{oneline(out)[-300:] or 'no answer'}")
        return None
    h.lines.append(f"  Moodle   read on {node.name} over SSH (this machine is not a web node of '{inv.env}')")
    return answer


def _ask_over_ssh(inv: Inventory, host: Host, h: Health, what: str, *args: str, timeout_s: float,
                  hint: str) -> str | None:
    """What `moodleops ARGS` printed on `host` (its toolkit, over SSH as Ansible
    connects); None, with one problem naming `what` and why, when it could not be had."""
    try:
        return run_moodleops(inv, host, *args, timeout_s=timeout_s)
    except (AnsibleViewError, PyinfraHostError, RemoteCommandFailed) as exc:
        h.problems.append(f"{what} not read on {host.name}: {exc}")
    except TimeoutError as exc:
        h.problems.append(f"{what} not read on {host.name}: {exc}; {hint}")
    except SshError as exc:
        h.problems.append(f"{what} not read on {host.name} over SSH: {exc.line()}")
    return None


def _check_nodes(inv: Inventory, site: Site, h: Health) -> None:
    if len(inv.group("web")) < 2:
        return      # one node: the HTTP login below is that node
    try:
        answers = probe_web_nodes(inv, site.wwwroot)
    except AnsibleViewError as exc:
        h.problems.append(str(exc))
        return
    for a in answers:
        h.lines.append(f"  Node     {a.host:<10} {'OK' if a.ok else 'DOWN'}  {a.detail if a.ok else a.url}")
        if not a.ok:
            h.problems.append(f"web node {a.host} is down: {a.detail}")


def _check_moodle(inv: Inventory, probe: dict[str, Any], h: Health) -> bool:
    """What Moodle itself says, against the pins; False when it is not installed."""
    if not probe.get("installed"):
        h.problems.append("Moodle is not installed")
        return False
    core_ok = _same_version(probe["version"], inv.core.version)
    h.lines.append(f"  Moodle   {probe['release']} (version {probe['version']}; pinned {inv.core.version_text})"
                   f"  {'OK' if core_ok else 'MISMATCH'}")
    if not core_ok:
        h.problems.append(f"core version {probe['version']} is not the pinned {inv.core.version_text}")
    override = inv.settings.allow_unsupported_php
    h.lines.append(f"  PHP      {probe['php']}" + ("  (unsupported-PHP override ON: test stack only)"
                                                     if override is True else ""))
    if probe.get("needs_upgrade"):
        h.problems.append("Moodle reports a pending upgrade")

    installed = probe.get("plugins", {})
    settings_set: dict[str, bool] = probe.get("settings_set", {})
    at_pin = 0
    h.lines.append("  Plugins  (versions as Moodle's database records them)")
    for pin in inv.plugins:
        got = installed.get(pin.component, {}).get("db")
        ok = _same_version(got, pin.version)
        at_pin += ok
        missing_keys = [s for s in pin.secrets if not settings_set.get(s)]
        note = f"  unconfigured: no API key ({', '.join(missing_keys)})" if missing_keys else ""
        h.lines.append(f"    {pin.component:<30} {got or 'not installed':<16} {'OK' if ok else 'MISMATCH'}{note}")
        if not ok:
            h.problems.append(f"{pin.component}: installed {got or 'nothing'}, pinned {pin.version_text}")
        if missing_keys:
            h.warnings.append(f"{pin.component} installed but unconfigured: no API key")
    h.lines.append(f"  Plugins  {at_pin}/{len(inv.plugins)} at their pinned version")
    h.lines.append(f"  Maintenance {'ON' if probe.get('maintenance_cli') or probe.get('maintenance_enabled') else 'off'}"
                   f"; cron {'enabled' if probe.get('cron_enabled') else 'DISABLED'}")
    if not probe.get("cron_enabled"):
        h.warnings.append("cron is disabled in Moodle")
    return True


def _check_login(inv: Inventory, site: Site, h: Health) -> None:
    ca = inv.settings.ca_bundle
    http = trusting(ca)
    try:
        if ca is not None and not ca.is_file():
            raise SiteError(f"moodle_ca_bundle {ca} does not exist (a self-signed certificate is fetched "
                            "there by `platform up`)")
        session = login(site.wwwroot, inv.settings.admin_user, site.secret("admin_password"), http=http)
        h.lines.append(f"  HTTP     login as admin OK (session alive: {session.is_logged_in()})")
    except (LoginFailed, SiteError, requests.RequestException) as exc:
        h.problems.append(f"HTTP login failed: {exc}")
    _check_monitoring(inv, h)


def _check_monitoring(inv: Inventory, h: Health) -> None:
    """The daemons listen on the monitoring host's loopback: asked here on a
    one-host stack, else there over SSH (`platform monitoring-probe` of its
    toolkit, with the addresses Ansible computes). A rehearsal Moodle beside
    the real one runs none of its own (monitoring_enabled: false)."""
    if not inv.group("monitoring") or not inv.settings.monitoring_enabled:
        return
    try:
        ep = endpoints(inv)
    except AnsibleViewError as exc:
        h.problems.append(str(exc))
        return
    if inv.is_loopback_only:
        lines, problems, warnings = check_monitoring(ep)
    else:
        mon = inv.group("monitoring")[0]
        out = _ask_over_ssh(inv, mon, h, "monitoring", "platform", "monitoring-probe", "--exporter", ep.exporter,
                            "--prometheus", ep.prometheus, timeout_s=60, hint="check the toolkit on that host")
        if out is None:
            return
        try:
            answer = json.loads((out.strip().splitlines() or ["{}"])[-1])
            lines, problems, warnings = (list(answer[k]) for k in ("lines", "problems", "warnings"))
        except (ValueError, KeyError, TypeError):
            h.problems.append(f"monitoring not read on {mon.name}: `moodleops platform monitoring-probe` there "
                              "did not answer in JSON (an older toolkit? run `platform up`)")
            return
        lines = [f"  Monitor  read on {mon.name} over SSH (its daemons listen on its loopback)", *lines]
    h.lines += lines
    h.problems += problems
    h.warnings += warnings
