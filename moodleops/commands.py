"""Man-page style parsers for the areas of the `moodleops` command.

Area modules import these helpers from here, never from moodleops.cli, which
imports the areas: no import cycle between the top command and its areas.
"""

from __future__ import annotations

import argparse

__all__ = ["add_area", "add_command"]


def add_area(areas: argparse._SubParsersAction, name: str, *, summary: str, description: str,
             epilog: str) -> argparse._SubParsersAction:
    """Add area `name` with man-page style help; returns the sub-parsers for its commands."""
    parser = areas.add_parser(name, help=summary, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.add_subparsers(dest="command", metavar="<command>", title="commands", required=True)


def add_command(commands: argparse._SubParsersAction, name: str, *, summary: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """Add one command with man-page style help; the caller adds options and `run`."""
    return commands.add_parser(name, help=summary, description=description, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
