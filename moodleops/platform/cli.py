"""`moodleops platform`: bring the platform up to the inventory, and say how it is."""

from __future__ import annotations

import argparse
import json
import sys
import time

from moodleops.commands import add_area, add_command
from moodleops.faults import playbook_ssh_error
from moodleops.inventory import Inventory, check_mirror, load_inventory
from moodleops.platform.ansible import PlaybookResult, run_playbook
from moodleops.platform.guard import PlatformHeld, platform_operation
from moodleops.platform.health import check_health, moodle_probe
from moodleops.platform.lock import PlatformLockBusy, PlatformLockError
from moodleops.platform.monitoring_health import MonitoringEndpoints, check_monitoring
from moodleops.platform.node_lock import NodeLockRefused, hold_here, operation_lock
from moodleops.platform.secrets import ensure_local_secrets
from moodleops.site import site_of


def _mirror_ready(inv: Inventory) -> bool:
    """When the inventory installs from the mirror, every pinned archive must be
    there with its pinned sha256 before any host is touched."""
    mirror = inv.settings.artifact_mirror
    if inv.settings.artifact_source != "mirror":
        return True
    if mirror is None:
        print("moodleops: error: moodle_artifact_source is 'mirror' but moodle_artifact_mirror is not set "
              f"(set it in {inv.env_dir}/group_vars/all.yml or MOODLEOPS_ARTIFACTS)")
        return False
    problems = [p for p in check_mirror(inv, mirror) if not p.startswith("note:")]
    for problem in problems:
        print(f"moodleops: error: {problem}")
    return not problems


def _raise_unreachable(result: PlaybookResult, inv: Inventory) -> None:
    # A host Ansible could not reach is SSH's fault (status 4), not the playbook's.
    err = playbook_ssh_error(result.output, result.unreachable, {h.name: h.ssh_address for h in inv.hosts})
    if err is not None:
        err.done = "nothing was changed on that host; re-run when it is reachable"
        raise err


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    inv = load_inventory(args.inventory)
    print(f"inventory '{inv.env}': {len(inv.schools)} schools, core {inv.core.version_text}, "
          f"{len(inv.plugins)} plugins, {len(inv.hosts)} host(s)")
    if inv.is_loopback_only:
        site = site_of(inv)
        assert site.secrets_dir is not None
        created = ensure_local_secrets(site.secrets_dir)
        if created:
            print(f"generated secrets {', '.join(created)} in {site.secrets_dir}")
    if not _mirror_ready(inv):
        return 1
    extra = ["--check", "--diff"] if args.check else []
    result = run_playbook(inv, "site.yml", extra + (["--tags", args.tags] if args.tags else []))
    _raise_unreachable(result, inv)
    if not result.ok:
        print(f"moodleops: error: the playbook failed (exit {result.returncode}); the output above says "
              "which task. Nothing was switched that the failed task did not reach.")
        return 1
    print(f"playbook done in {time.monotonic() - started:.0f} s, {result.total_changed} change(s)")
    if args.check:
        return 0
    site = site_of(inv)
    print(f"\nMoodle   {site.wwwroot}  (admin; password: "
          f"{site.secrets_dir / 'admin_password' if site.secrets_dir else 'from vault'})")
    return cmd_status(args)


def cmd_status(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    health = check_health(inv, site_of(inv))
    print(health.render())
    return 0 if health.ok else 1


def cmd_probe(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    print(json.dumps(moodle_probe(inv, site_of(inv))))
    return 0


def cmd_monitoring_probe(args: argparse.Namespace) -> int:
    lines, problems, warnings = check_monitoring(MonitoringEndpoints(args.exporter, args.prometheus))
    print(json.dumps({"lines": lines, "problems": problems, "warnings": warnings}))
    return 0


def _play_verdict(output: list[str]) -> str | None:
    """The play's own last word on a failed upgrade (the message of its final
    `fail` task: what state the platform is in), if it got that far."""
    for line in reversed(output):
        _, sep, payload = line.partition("FAILED! => ")
        if not sep:
            continue
        try:
            msg = str(json.loads(payload).get("msg", ""))
        except ValueError:
            continue
        if msg.startswith("UPGRADE"):
            return " ".join(msg.split())
    return None


def cmd_upgrade(args: argparse.Namespace) -> int:
    if args.delay < 0 or args.delay > 1440:
        print(f"moodleops: error: --delay {args.delay} is not valid (allowed: 0 to 1440 minutes)", file=sys.stderr)
        return 2
    if args.recover and (args.delay or args.message):
        print("moodleops: error: --recover finishes an interrupted run as it was: --delay and --message do not apply", file=sys.stderr)
        return 2
    inv = load_inventory(args.inventory)
    if not args.recover and not _mirror_ready(inv):
        return 1
    extra_vars: dict[str, object] = {"moodle_upgrade_recover": True} if args.recover else {}
    if args.operator:
        extra_vars["moodle_upgrade_operator"] = args.operator
    if args.delay:
        extra_vars["moodle_upgrade_maintenance_delay_minutes"] = args.delay
    if args.message:
        extra_vars["moodle_upgrade_maintenance_message"] = args.message
    extra = ["-e", json.dumps(extra_vars)] if extra_vars else []
    if not args.apply:
        print("dry run: " + ("what the recovery would do (add --apply to recover)" if args.recover
                             else "pre-flight and what would change (add --apply to upgrade)"))
        extra.append("--check")
    started = time.monotonic()
    if args.apply:
        try:
            # From an operator's machine the lock is held on the first web node (node_lock.py).
            with operation_lock(inv, "platform upgrade" + (" --recover" if args.recover else "")):
                result = run_playbook(inv, "upgrade.yml", extra)
        except (PlatformHeld, PlatformLockBusy, PlatformLockError, NodeLockRefused) as exc:
            print(f"moodleops: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 1
    else:
        result = run_playbook(inv, "upgrade.yml", extra)
    _raise_unreachable(result, inv)
    took = time.monotonic() - started
    if args.recover:
        return _recovery_verdict(result, args.apply, took)
    if not result.ok:
        verdict = _play_verdict(result.output)
        print(f"moodleops: error: upgrade failed after {took:.0f} s: "
              + (verdict or "the output above says where; nothing was switched (the play stopped before "
                            "changing anything, or see the last line of the upgrade log)"))
        return 1
    print(f"upgrade {'done' if args.apply else 'dry run done'} in {took:.0f} s")
    return cmd_status(args) if args.apply else 0


def _recovery_verdict(result: PlaybookResult, applied: bool, took: float) -> int:
    if not result.ok:
        print(f"moodleops: error: recovery not done after {took:.0f} s: "
              + (_play_verdict(result.output) or "the output above says which task; the intent record is kept"))
        return 1
    said = _play_said(result.output)
    print(f"recovery {'done' if applied else 'dry run done'} in {took:.0f} s" + (f": {said}" if said else ""))
    return 0


def _play_said(output: list[str]) -> str | None:
    """The last UPGRADE message a debug task printed (`"msg": "UPGRADE ..."`)."""
    for line in reversed(output):
        text = line.strip()
        if not text.startswith('"msg": "UPGRADE'):
            continue
        try:
            return " ".join(str(json.loads("{" + text + "}")["msg"]).split())
        except ValueError:
            continue
    return None


def cmd_hold_lock(args: argparse.Namespace) -> int:
    try:
        return hold_here(args.inventory, args.what)
    except (PlatformHeld, PlatformLockBusy, PlatformLockError) as exc:
        print(f"moodleops: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


def cmd_maintenance(args: argparse.Namespace) -> int:
    from moodleops.moodle import MoodleCLI
    inv = load_inventory(args.inventory)
    site = site_of(inv)
    site.require_here()
    moodle = MoodleCLI(site)
    try:
        if args.state == "on":
            with platform_operation(site, inv.env, "platform maintenance on", refuse_if_held=False):
                if args.message:
                    moodle.run("admin/cli/cfg.php", "--name=maintenance_message", f"--set={args.message}")
                moodle.run("admin/cli/maintenance.php", "--enable")
        else:
            # Refused while an incident holds the platform: its reinstatement restores both modes exactly.
            with platform_operation(site, inv.env, "platform maintenance off"):
                moodle.run("admin/cli/maintenance.php", "--disable")
                moodle.run("admin/cli/cron.php", "--enable")
    except (PlatformHeld, PlatformLockBusy, PlatformLockError) as exc:
        print(f"moodleops: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(moodle.run("admin/cli/maintenance.php").stdout.strip().splitlines()[-1])
    return 0


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "platform", summary="bring the platform up to the inventory; show its health",
        description="Provision or re-apply the whole platform with Ansible (playbooks/site.yml), "
                    "and report what Moodle itself says it runs.",
        epilog="examples:\n  moodleops platform up              # local stack on this machine\n"
               "  moodleops platform up --check      # what would change, changing nothing\n"
               "  moodleops -i production platform status\n")
    up = add_command(
        commands, "up", summary="apply playbooks/site.yml, then print the health summary",
        description="Validate the inventory (and the artifact mirror when the inventory installs from it), "
                    "generate the local stack's secrets if missing, run playbooks/site.yml, then print "
                    "the health summary. Idempotent: a second run changes nothing. On an installed site "
                    "whose pins changed, the play refuses to switch code: that is `platform upgrade`'s job.",
        epilog="exit status:\n  0  applied and healthy\n  1  the playbook failed or the site is unhealthy\n"
               "  2  invalid inventory\n  4  a host could not be reached over SSH (one line names it)\n")
    up.add_argument("--check", action="store_true", help="dry run: ansible --check --diff, change nothing")
    up.add_argument("--tags", help="only these playbook tags (comma-separated), e.g. nginx,php")
    up.set_defaults(run=cmd_up)
    status = add_command(
        commands, "status", summary="health summary: each web node, versions from Moodle, plugins vs pins, "
                                    "HTTP login",
        description="With several web nodes, ask each one directly (past the load balancer) for Moodle's "
                    "login page and name any that is down, with what to check. Ask Moodle (as the web user, "
                    "through its API) which core and plugin versions it has installed, compare them with the "
                    "pins and say which external-service plugins have no API key: here on a web node of the "
                    "inventory, elsewhere on the first web node over SSH (`platform probe` there, connected as "
                    "Ansible connects). Log in over HTTP as the admin with the login-token flow, trusting "
                    "moodle_ca_bundle when the inventory names one.",
        epilog="exit status:\n  0  healthy (warnings allowed)\n  1  at least one problem\n")
    status.set_defaults(run=cmd_status)
    probe = add_command(
        commands, "probe", summary="what this web node's Moodle says, as one JSON line (for `status` over SSH)",
        description="Ask the Moodle installed on this web node (as the web user, through its API) whether it is "
                    "installed, its core and plugin versions as its database records them, maintenance, cron, "
                    "and whether the plugins' API keys are set; print that as one JSON line. `platform status` "
                    "run elsewhere reads it on the first web node over SSH (the toolkit role installs it there).",
        epilog="exit status:\n  0  answered\n  2  this machine is not a web node of the inventory\n"
               "  4  Moodle's CLI failed\n")
    probe.set_defaults(run=cmd_probe)
    mprobe = add_command(
        commands, "monitoring-probe", summary="is this host's monitoring working, as one JSON line (for `status`)",
        description="Ask the storage exporter and Prometheus at the given URLs (this host's loopback, where the "
                    "monitoring role binds them) whether the exporter answers and Prometheus scrapes it; print "
                    "the report lines, problems and warnings as one JSON line. `platform status` run elsewhere "
                    "asks the monitoring host this over SSH, with the URLs Ansible computes for it.",
        epilog="exit status:\n  0  answered (the problems are in the JSON)\n")
    mprobe.add_argument("--exporter", required=True, metavar="URL", help="the storage exporter, http://host:port")
    mprobe.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus, http://host:port")
    mprobe.set_defaults(run=cmd_monitoring_probe)
    hold = add_command(
        commands, "hold-lock", summary="hold the platform lock on this web node until stdin ends (for `upgrade`)",
        description="Take the platform lock here (refused while it is held or a platform incident is open), "
                    "print 'held', and keep it until standard input ends. `platform upgrade` run from a machine "
                    "the database does not admit holds the lock this way on the first web node over SSH: the "
                    "lock ends with the connection, so a killed or disconnected operator never leaves it behind.",
        epilog="exit status:\n  0  held, then released\n  1  busy, an incident holds the platform, or no database\n"
               "  2  this machine is not a web node of the inventory\n")
    hold.add_argument("--what", required=True, help="what the lock is held for (shown to anyone it refuses)")
    hold.set_defaults(run=cmd_hold_lock)
    upgrade = add_command(
        commands, "upgrade", summary="patch to the pins: pre-flight, backup, maintenance, switch, rollback",
        description="Move the platform to the versions pinned in inventory/moodle.yml (a 4.1.x point release "
                    "and/or plugin versions) with playbooks/upgrade.yml:\n"
                    "  1. pre-flight, changing nothing: hosts reachable, free disk, archives present and sha256 "
                    "verified (the new release is built beside the current one), plugins' `requires` met, no "
                    "downgrade, checks.php recorded;\n"
                    "  2. the maintenance message set (--message), optionally announced --delay minutes before, "
                    "cron paused (if tasks still run after the wait: cron re-enabled, the site given back, exit 1), "
                    "maintenance on;\n"
                    "  3. database dump (custom format) and the current release kept;\n"
                    "  4. `current` switched node by node, php-fpm reloaded, upgrade.php, caches purged;\n"
                    "  5. post-flight: versions from Moodle, checks.php no worse, HTTP admin login; site opened.\n"
                    "Any failure from step 4 on rolls back: maintenance page back on first, then the previous "
                    "release on every node, then the database restored from the dump into a new database swapped "
                    "in by rename (if that restore fails the live database is kept, nothing is dropped, and the "
                    "message says so); maintenance and the cron pause stay ON. Every run is appended to the upgrade log "
                    "(moodle_upgrade_log, default /var/lib/moodleops/upgrades.jsonl).\n"
                    "A run that is killed (its controller lost) leaves its intent record (moodle_upgrade_intent): "
                    "the next upgrade is refused until `--recover --apply` gives the site back (stopped before the "
                    "code switch) or rolls back (from the switch on) from it.\n"
                    "Without --apply this is a dry run.",
        epilog="examples:\n  moodleops platform upgrade                 # what would change\n"
               "  moodleops platform upgrade --apply --delay 10 --operator jdupont\n"
               "  moodleops platform upgrade --recover --apply   # after a run was killed\n"
               "exit status:\n  0  upgraded, or recovered (or dry run clean)\n  1  refused or failed (rolled back if it "
               "had started)\n  2  invalid inventory\n  4  a host could not be reached over SSH: nothing "
               "was changed on it\n")
    upgrade.add_argument("--apply", action="store_true", help="really upgrade (default: dry run)")
    upgrade.add_argument("--delay", type=int, default=0, metavar="MINUTES",
                         help="announce maintenance this many minutes before it starts")
    upgrade.add_argument("--message", help="what users see while maintenance is on (default: "
                         "moodle_upgrade_maintenance_message); set before the --delay announcement")
    upgrade.add_argument("--operator", help="name recorded in the upgrade log (default: $SUDO_USER/$USER)")
    upgrade.add_argument("--recover", action="store_true",
                         help="finish a run that was killed, from its intent record: give back (stopped before the "
                              "code switch) or roll back (from the switch on); dry run without --apply")
    upgrade.set_defaults(run=cmd_upgrade)
    maint = add_command(
        commands, "maintenance", summary="turn CLI maintenance on (with a message) or off (and resume cron)",
        description="Moodle's own maintenance switch (admin/cli/maintenance.php). `off` also re-enables cron, "
                    "which an upgrade pauses. Both take the platform lock; `off` refuses while an incident "
                    "runbook holds the platform in maintenance (its reinstatement restores it exactly).",
        epilog="examples:\n  moodleops platform maintenance on --message 'Intervention en cours'\n"
               "  moodleops platform maintenance off\n"
               "exit status:\n  0  done\n  1  refused: a platform incident is open, or the platform lock is "
               "held (the message says by whom)\n")
    maint.add_argument("state", choices=["on", "off"])
    maint.add_argument("--message", help="message shown to users while maintenance is on")
    maint.set_defaults(run=cmd_maintenance)
