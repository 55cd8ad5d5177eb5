"""The one error type of `moodleops capacity`: a sentence an operator can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CapacityError(ValueError):
    """Bad input (history, school, date, file) or unusable data. The message names
    the bad value and what is allowed; the CLI prints it on one line."""


def read_schema_doc(path: Path, schema: str, what: str, written_by: str) -> dict[str, Any]:
    """A recorded JSON document (snapshot, review data) of the given schema, or
    a one-line CapacityError naming the file and what is expected."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CapacityError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CapacityError(f"{what} {path} cannot be read ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise CapacityError(f"{path}: schema {found!r} is not valid ({schema}, written by `{written_by}`)")
    return doc
