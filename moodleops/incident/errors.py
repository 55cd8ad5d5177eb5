"""Errors the operator can fix: bad input, a busy lock, an incomplete incident, a damaged journal."""

from __future__ import annotations


class IncidentError(ValueError):
    """Bad input (unknown school/user/incident, malformed CSV...): nothing was changed."""


class LockBusy(RuntimeError):
    """Another runbook (or an upgrade, a restore...) holds the platform lock."""


class IncidentIncomplete(RuntimeError):
    """An earlier incident was interrupted: `moodleops incident recover` first."""


class JournalError(RuntimeError):
    """The journal cannot be written or read back as a valid chain."""
