"""`moodleops inventory check|show`: validate the inventory and show the schools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moodleops.commands import add_area, add_command
from moodleops.console import table_lines
from moodleops.inventory.loader import REQUIRED_GROUPS, load_inventory
from moodleops.inventory.mirror import check_mirror
from moodleops.inventory.model import Inventory, School
from moodleops.units import gb
from moodleops.validation import validate


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "inventory",
        summary="validate the inventory and show the schools",
        description="""\
Read and validate the inventory of one environment: the agreement facts
(inventory/platform.yml), the beneficiary schools (inventory/schools.yml), the
Moodle core and plugin pins (inventory/moodle.yml), the planning and load
parameters (inventory/capacity.yml, inventory/loadmodel.yml), the hosts and
settings of the environment (inventory/<ENV>/hosts.yml, group_vars/all.yml).
Any invalid value stops the command with the file, the key and the value to
fix. ansible-playbook runs the same validation (playbooks/vars_plugins/) and
stops with the same line.""",
        epilog="""\
examples:
  moodleops inventory check
  moodleops --inventory production inventory check --mirror ../shared/artifacts
  moodleops inventory show --format json""",
    )

    check = add_command(
        commands, "check",
        summary="validate the inventory (and an artifact mirror)",
        description="""\
Validate every inventory file of the environment and print a short summary:
environment, schools, storage pool, Moodle core version, plugins and hosts.

With --mirror, also check that every pinned archive is in the mirror
directory with the pinned sha256; components that the mirror's MANIFEST.json
lists but the inventory does not pin are reported as "note:" lines.""",
        epilog="""\
exit status:
  0  the inventory is valid (and the mirror matches every pin)
  1  the mirror lacks a pinned archive or holds one with another sha256
  2  the inventory is invalid (one line on stderr naming file, key, value)

examples:
  moodleops inventory check
  moodleops --inventory production inventory check
  moodleops inventory check --mirror /work/shared/artifacts""",
    )
    check.add_argument("--mirror", metavar="DIR", type=Path,
                       help="artifact mirror directory to check the pinned archives against")
    check.set_defaults(run=run_check)

    show = add_command(
        commands, "show",
        summary="list the schools",
        description="""\
List the beneficiary schools: code (the key used by every other command),
name, category idnumber, open student and trainer accounts, and the storage
alert threshold in GB (decimal, as in the agreement).""",
        epilog="""\
examples:
  moodleops inventory show
  moodleops inventory show --format json | jq '.[] | select(.students > 300) | .code'""",
    )
    show.add_argument("--format", choices=("table", "json"), default="table",
                      help="table for people, json for scripts (default: %(default)s)")
    show.set_defaults(run=run_show)


def run_check(args: argparse.Namespace) -> int:
    # The same validation as the playbooks' vars plugin: every file of the environment.
    inv = validate(args.inventory)
    print("\n".join(summary(inv)))
    if args.mirror is None:
        return 0
    lines = check_mirror(inv, args.mirror)
    problems = [line for line in lines if not line.startswith("note:")]
    for line in lines:
        if line in problems:
            print(f"moodleops: mirror: {line}", file=sys.stderr)
        else:
            print(line)
    if problems:
        print(f"mirror {args.mirror}: {len(problems)} problem(s)")
        return 1
    print(f"mirror {args.mirror}: {1 + len(inv.plugins)} archives match their pins")
    return 0


def summary(inv: Inventory) -> list[str]:
    p = inv.platform
    students = sum(s.students for s in inv.schools)
    trainers = sum(s.trainers for s in inv.schools)
    groups = {g: len(inv.group(g)) for g in REQUIRED_GROUPS}
    where = "; loopback only" if inv.is_loopback_only else ""
    return [
        f"inventory {inv.env} ({inv.env_dir}): valid",
        f"  schools:  {len(inv.schools)} ({students} students, {trainers} trainers)",
        f"  pool:     {gb(p.pool_bytes)} GB; school alert {gb(p.default_school_alert_bytes)} GB by default",
        f"  core:     {inv.core.release or 'Moodle'}, version {inv.core.version_text}",
        f"  plugins:  {len(inv.plugins)}",
        f"  hosts:    {len(inv.hosts)} ("
        + ", ".join(f"{g} {n}" for g, n in groups.items()) + f"){where}",
    ]


def run_show(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    if args.format == "json":
        print(json.dumps([school_record(s) for s in inv.schools], ensure_ascii=False, indent=2))
    else:
        print("\n".join(school_table(inv.schools)))
    return 0


def school_record(s: School) -> dict[str, object]:
    return {"code": s.code, "name": s.name, "category_idnumber": s.category_idnumber,
            "cohort_idnumber": s.cohort_idnumber, "students": s.students, "trainers": s.trainers,
            "alert_bytes": s.alert_bytes, "alert_gb": s.alert_bytes / 1e9}


def school_table(schools: tuple[School, ...]) -> list[str]:
    header = ("code", "name", "idnumber", "students", "trainers", "alert GB")
    rows = [(s.code, s.name, s.category_idnumber, str(s.students), str(s.trainers), gb(s.alert_bytes))
            for s in schools]
    total = ("total", f"{len(schools)} schools", "", str(sum(s.students for s in schools)),
             str(sum(s.trainers for s in schools)), "")
    return table_lines(header, rows, numeric={3, 4, 5}, total=total)
