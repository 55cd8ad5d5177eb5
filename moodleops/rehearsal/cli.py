"""`moodleops rehearsal up | status | down`: the production topology as LXC
containers on this machine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from moodleops.commands import add_area, add_command
from moodleops.inventory import Inventory, load_inventory
from moodleops.rehearsal import lifecycle
from moodleops.rehearsal.spec import Rehearsal, load_rehearsal

EXIT = ("exit status:\n  0  done\n  1  a host, lxc or the network failed (one line says which and what to do)\n"
        "  2  invalid inventory, or an inventory without rehearsal.yml\n")


def _say(line: str) -> None:
    print(line, flush=True)


def _spec(args: argparse.Namespace) -> Rehearsal:
    inv: Inventory = load_inventory(args.inventory)
    # Without -i the global default is the local stack, which has nothing to rehearse.
    if args.inventory == "local" and not (inv.env_dir / "rehearsal.yml").is_file():
        inv = load_inventory("rehearsal")
    return load_rehearsal(inv)


def _fail(exc: lifecycle.RehearsalError) -> int:
    print(f"moodleops: error: {exc}", file=sys.stderr)
    return 1


def _act(args: argparse.Namespace, action: Callable[[Rehearsal, Callable[[str], None]], None]) -> int:
    spec = _spec(args)
    try:
        action(spec, _say)
    except lifecycle.RehearsalError as exc:
        return _fail(exc)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    return _act(args, lifecycle.up)


def cmd_prepare(args: argparse.Namespace) -> int:
    return _act(args, lifecycle.prepare)


def cmd_status(args: argparse.Namespace) -> int:
    spec = _spec(args)
    try:
        hosts = lifecycle.status(spec)
    except lifecycle.RehearsalError as exc:
        return _fail(exc)
    width = max(len(h.host.name) for h in hosts)
    for h in hosts:
        groups = ",".join(h.host.groups)
        print(f"{h.host.name:<{width}}  {h.host.address:<15} {h.state:<8} {'ok' if h.ok else h.problem}  "
              f"[{groups}]")
    bad = [h for h in hosts if not h.ok]
    print(f"{len(hosts) - len(bad)}/{len(hosts)} hosts up and reachable over SSH")
    return 1 if bad else 0


def cmd_down(args: argparse.Namespace) -> int:
    return _act(args, lambda spec, say: lifecycle.down(spec, say, purge=args.purge))


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "rehearsal", summary="the production topology as LXC containers on this machine",
        description="Build the hosts of inventory/rehearsal/hosts.yml as Debian 12 LXC system containers "
                    "(one cached base, overlay snapshots per host), on the lxc-net bridge, reachable over SSH "
                    "with a key the rehearsal generates. Then `moodleops -i rehearsal platform up` provisions "
                    "them as production. See docs/rehearsal.md.\n"
                    "These commands use inventory `rehearsal` unless -i names another one with a rehearsal.yml.",
        epilog="examples:\n  moodleops rehearsal prepare       # ahead of time: the base (minutes, once)\n"
               "  moodleops rehearsal up\n  moodleops rehearsal status\n"
               "  moodleops rehearsal down            # keeps the cached base\n"
               "  moodleops rehearsal down --purge    # the base too\n")
    up = add_command(commands, "up", summary="build or start every host (idempotent)",
                     description="Start lxc-net if needed, build the base once (cached), clone and start the "
                                 "missing hosts, install the rehearsal's SSH key, pin host keys, check that "
                                 "each host answers over SSH as `moodleops` with sudo.", epilog=EXIT)
    up.set_defaults(run=cmd_up)
    prepare = add_command(commands, "prepare", summary="the network and the cached base only (no host)",
                          description="Start lxc-net if needed and build the base once (cached), so that "
                                      "the next `up` only clones and starts hosts. Waits for another "
                                      "rehearsal command running on this machine.", epilog=EXIT)
    prepare.set_defaults(run=cmd_prepare)
    status = add_command(commands, "status", summary="each host: container state, address, SSH",
                         description="One line per host; exit 1 if any is not running or not reachable.",
                         epilog=EXIT)
    status.set_defaults(run=cmd_status)
    down = add_command(commands, "down", summary="remove every host container, and the network if ours",
                       description="Remove the hosts' containers (also those of a killed `up`), and stop "
                                   "lxc-net if the rehearsal started it and no other container uses it. "
                                   "The base stays cached unless --purge.", epilog=EXIT)
    down.add_argument("--purge", action="store_true", help="remove the cached base container too")
    down.set_defaults(run=cmd_down)
