"""`moodleops platform`: bring the platform up to the inventory, and say how it is."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from moodleops import REPO_ROOT
from moodleops.cli import add_area, add_command
from moodleops.inventory import check_mirror, load_inventory
from moodleops.platform.ansible import run_playbook
from moodleops.platform.health import check_health
from moodleops.platform.secrets import ensure_local_secrets
from moodleops.site import platform_vars, site_of


def mirror_dir() -> Path:
    """The offline artifact mirror: $MOODLEOPS_ARTIFACTS, else ../shared/artifacts
    beside the checkout (the same default as inventory/local/group_vars)."""
    return Path(os.environ.get("MOODLEOPS_ARTIFACTS") or REPO_ROOT.parent / "shared" / "artifacts")


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
    if platform_vars(inv).get("moodle_artifact_source") == "mirror":
        problems = [p for p in check_mirror(inv, mirror_dir()) if not p.startswith("note:")]
        if problems:
            for p in problems:
                print(f"moodleops: error: {p}")
            return 1
    extra = ["--check", "--diff"] if args.check else []
    result = run_playbook(inv, "site.yml", extra + (["--tags", args.tags] if args.tags else []))
    if not result.ok:
        print(f"moodleops: error: the playbook failed (exit {result.returncode}); the output above says "
              "which task. Nothing was switched that the failed task did not reach.")
        return 1
    print(f"playbook done in {time.monotonic() - started:.0f} s, {result.total_changed} change(s)")
    if args.check:
        return 0
    return cmd_status(args)


def cmd_status(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    health = check_health(inv, site_of(inv))
    print(health.render())
    return 0 if health.ok else 1


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
               "  2  invalid inventory\n")
    up.add_argument("--check", action="store_true", help="dry run: ansible --check --diff, change nothing")
    up.add_argument("--tags", help="only these playbook tags (comma-separated), e.g. nginx,php")
    up.set_defaults(run=cmd_up)
    status = add_command(
        commands, "status", summary="health summary: versions from Moodle, plugins vs pins, HTTP login",
        description="Ask Moodle (as the web user, through its API) which core and plugin versions it has "
                    "installed, compare them with the pins, say which external-service plugins have no API "
                    "key, and log in over HTTP as the admin with the login-token flow.",
        epilog="exit status:\n  0  healthy (warnings allowed)\n  1  at least one problem\n")
    status.set_defaults(run=cmd_status)
