"""The one error type of `moodleops capacity`: a sentence an operator can act on."""

from __future__ import annotations


class CapacityError(ValueError):
    """Bad input (history, school, date, file) or unusable data. The message names
    the bad value and what is allowed; the CLI prints it on one line."""
