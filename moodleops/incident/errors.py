"""Errors the operator can fix: bad input, a busy lock."""

from __future__ import annotations


class IncidentError(ValueError):
    """Bad input (unknown school/user/incident, malformed CSV...): nothing was changed."""


class LockBusy(RuntimeError):
    """Another runbook holds the lock."""
