"""Helpers shared by the capacity tests (imported by name: pytest puts this
directory on sys.path)."""

from __future__ import annotations

import contextlib
import io

from moodleops.cli import main


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run `moodleops ARGV` in-process; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()
