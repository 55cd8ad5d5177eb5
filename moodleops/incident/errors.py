"""Errors the operator can fix: bad input, a busy lock, an incomplete incident, a
damaged journal. Each is one of the CLI's error types, so its exit status comes
from the one table (moodleops.errors) and not from a mapping of its own."""

from __future__ import annotations

from moodleops.errors import BusyError, IncompleteError, OperationFailed, UsageError


class IncidentError(UsageError, ValueError):
    """Bad input (unknown school/user/incident, malformed CSV...): nothing was changed."""


class LockBusy(BusyError):
    """Another runbook (or an upgrade, a restore...) holds the platform lock."""


class IncidentIncomplete(IncompleteError):
    """An earlier incident was interrupted: `moodleops incident recover` first."""


class JournalError(OperationFailed):
    """The journal cannot be written or read back as a valid chain."""
