"""The `moodleops` command: `moodleops [--inventory ENV] <area> <command> [options]`.

Each area (inventory, platform, storage, ...) lives in its own module that
exposes `register(areas)`: it adds one parser to `areas` (moodleops.commands.add_area) and,
for each command, a sub-parser with `set_defaults(run=function)`, where
`function(args) -> int` returns the exit status. Adding an area is one line in
AREAS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from moodleops.errors import EXIT_NOTE, ExitStatus, exit_table_text
from moodleops.faults import report

AREAS: dict[str, str] = {
    "inventory": "moodleops.inventory.cli",
    "platform": "moodleops.platform.cli",
    "loadtest": "moodleops.loadtests.cli",
    "capacity": "moodleops.capacity.cli",
    "incident": "moodleops.incident.cli",
    "storage": "moodleops.exporters.storage_cli",
    "watch": "moodleops.exporters.watch_cli",
    "backup": "moodleops.backup.cli",
    "rehearsal": "moodleops.rehearsal.cli",
}

DESCRIPTION = """\
Operations toolkit for the UT paramedical-schools Moodle 4.1 platform.

Every command reads the inventory: the shared facts in inventory/*.yml
(agreement, schools, Moodle pins) plus one environment directory,
inventory/<ENV>/ (Ansible hosts.yml and group_vars). Nothing is hard-coded:
to change a school, a threshold or a plugin version, edit the inventory and
run `moodleops inventory check`.
"""

EPILOG = f"""\
environment:
  MOODLEOPS_INVENTORY   default for --inventory (otherwise: local)

exit status (every command):
{exit_table_text()}

{textwrap.fill(EXIT_NOTE, 79)}
An invalid inventory reads "moodleops: error: <file>: <key>: <value> is not
valid (<allowed>)"; a dependency fault "moodleops: error: <dependency>
<address>: <what failed> (check <what next>)[; <what was done>]".

examples:
  moodleops inventory check
  moodleops --inventory production inventory show --format json
  moodleops <area> --help
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moodleops", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", metavar="ENV",
                        default=os.environ.get("MOODLEOPS_INVENTORY", "local"),
                        help="environment: a directory name under inventory/ (local, production) "
                             "or a path to one (default: %(default)s)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print the Python traceback (for bug reports)")
    areas = parser.add_subparsers(dest="area", metavar="<area>", title="areas", required=True)
    for name, module in AREAS.items():
        try:
            importlib.import_module(module).register(areas)
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("moodleops"):
                raise
            # A platform host (the toolkit role installs only the `host`
            # extra): the area exists but says what it lacks.
            _unavailable(areas, name, str(exc.name))
    return parser


def _unavailable(areas: argparse._SubParsersAction, name: str, missing: str) -> None:
    def run(args: argparse.Namespace) -> int:
        print(f"moodleops: error: `moodleops {name}` needs the Python package {missing}, not installed "
              "on this host (a platform host has only the toolkit's `host` extra): run it from the controller",
              file=sys.stderr)
        return 2
    parser = areas.add_parser(name, help=f"(unavailable here: needs {missing})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help and usage errors: argparse has already printed; callers get a status, not an exit.
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # `moodleops ... | head` closed stdout early: not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("moodleops: interrupted: a re-run resumes or says what is left", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one place where every fault becomes one line
        return report(exc, debug=getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
