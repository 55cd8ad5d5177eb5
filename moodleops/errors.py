"""The command-line contract every `moodleops` command keeps: one table of exit
statuses, one error type per kind of failure, one line on stderr per failure.

A command raises one of these types (or lets a library fault through: the
top-level command turns it into one with `moodleops.faults.translate`). The
line names what failed (the dependency and its address, or the bad value),
the next thing to check, and what the command had already done.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum
from typing import ClassVar


class ExitStatus(IntEnum):
    OK = 0
    PROBLEMS = 1
    USAGE = 2
    BUSY = 3
    DEPENDENCY = 4
    FILESYSTEM = 5
    FAILED = 6
    INCOMPLETE = 7
    INCONCLUSIVE = 8
    BUG = 70
    INTERRUPTED = 130


#: The one table of exit statuses, printed by `moodleops --help` and kept by every command.
EXIT_TABLE: tuple[tuple[ExitStatus, str], ...] = (
    (ExitStatus.OK, "done (or dry run shown)"),
    (ExitStatus.PROBLEMS, "done, with problems to look at (listed in the output)"),
    (ExitStatus.USAGE, "bad option, bad input or invalid inventory: nothing changed"),
    (ExitStatus.BUSY, "another run holds the lock: nothing changed"),
    (ExitStatus.DEPENDENCY, ("a service the command needs failed: database, Moodle (PHP CLI or HTTP), "
                             "S3, Prometheus or an exporter, Alertmanager, SMTP or SSH")),
    (ExitStatus.FILESYSTEM, "a local filesystem refused: full, read-only or permission denied"),
    (ExitStatus.FAILED, ("the operation stopped on one of its own checks (a corrupt object, a failed "
                         "step, a rollback, a damaged journal)")),
    (ExitStatus.INCOMPLETE, ("an earlier run was interrupted and is incomplete: nothing changed; "
                             "recover it first (e.g. `moodleops incident recover`)")),
    (ExitStatus.INCONCLUSIVE, ("a measurement could not judge (e.g. a load run in which a page type ran "
                               "too rarely): nothing violated, nothing proven")),
    (ExitStatus.BUG, "unexpected error in moodleops itself (run again with --debug for the traceback)"),
    (ExitStatus.INTERRUPTED, "interrupted (Ctrl-C, SIGINT): a re-run resumes or says what is left"),
)

EXIT_NOTE = ("On any status but 0 and 1, stderr has exactly one line: what failed (with its "
             "address or path), what to check next, and what had already been done "
             "(a re-run resumes or refuses; it never repeats what was done).")


def exit_table_text(indent: str = "  ", width: int = 79) -> str:
    out = []
    for status, text in EXIT_TABLE:
        head = f"{indent}{int(status):<3} "
        out.append(textwrap.fill(text, width, initial_indent=head, subsequent_indent=" " * len(head)))
    return "\n".join(out)


def oneline(text: object) -> str:
    return " ".join(str(text).split())


class OpsError(Exception):
    """Base of every error a command reports on one line. `done` says what the
    command had finished before it stopped, and how a re-run goes on."""

    status: ClassVar[ExitStatus] = ExitStatus.FAILED

    def __init__(self, message: str, *, done: str | None = None) -> None:
        super().__init__(oneline(message))
        self.done = oneline(done) if done else None

    def line(self) -> str:
        return str(self) + (f"; {self.done}" if self.done else "")


class UsageError(OpsError):
    """Bad option or input value (the message names it and what is allowed): nothing changed."""

    status = ExitStatus.USAGE


class BusyError(OpsError):
    """Another run holds the lock this command needs: nothing changed."""

    status = ExitStatus.BUSY


class IncompleteError(OpsError):
    """An earlier run was interrupted and must be recovered first: nothing changed."""

    status = ExitStatus.INCOMPLETE


class OperationFailed(OpsError):
    """The operation stopped on one of its own checks (corrupt object, failed step)."""

    status = ExitStatus.FAILED


class DependencyError(OpsError):
    """A service the command talks to failed. Subclasses name the dependency;
    `address` is where it was reached, `check` the next thing to look at."""

    status = ExitStatus.DEPENDENCY
    dependency: ClassVar[str] = "dependency"

    def __init__(self, address: str, problem: str, check: str, *, done: str | None = None) -> None:
        self.address, self.problem, self.check = address, oneline(problem), oneline(check)
        super().__init__(self.problem, done=done)

    def __str__(self) -> str:
        where = f" {self.address}" if self.address else ""
        return f"{self.dependency}{where}: {self.problem} (check {self.check})"


class DatabaseError(DependencyError):
    dependency = "database"


class MoodleCliError(DependencyError):
    dependency = "Moodle PHP CLI"


class MoodleHttpError(DependencyError):
    dependency = "Moodle over HTTP"


class S3Error(DependencyError):
    dependency = "S3"


class PrometheusError(DependencyError):
    dependency = "Prometheus"


class ExporterError(DependencyError):
    """A Prometheus exporter's /metrics read directly (`capacity record --from-metrics`)."""

    dependency = "exporter"


class AlertmanagerError(DependencyError):
    dependency = "Alertmanager"


class SmtpError(DependencyError):
    dependency = "SMTP"


class SshError(DependencyError):
    dependency = "SSH"


class FilesystemError(DependencyError):
    status = ExitStatus.FILESYSTEM
    dependency = "filesystem"


#: Every dependency kind, by the name its one line starts with (the fault matrix iterates them).
DEPENDENCIES: dict[str, type[DependencyError]] = {
    cls.dependency: cls for cls in (DatabaseError, MoodleCliError, MoodleHttpError, S3Error, PrometheusError,
                                    ExporterError, AlertmanagerError, SmtpError, SshError, FilesystemError)
}
