"""The operator's inputs: user lists and the schools' renewal CSVs. Every
problem names the file, line and value, and is raised before anything changes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from moodleops.incident.errors import IncidentError


def parse_user_list(text: str) -> list[str]:
    """`a,b,c` -> usernames, in order, without duplicates."""
    names = [n.strip() for n in text.split(",")]
    if not any(names):
        raise IncidentError(f"--users {text!r}: empty list (expected usernames separated by commas)")
    bad = [n for n in names if not n]
    if bad:
        raise IncidentError(f"--users {text!r}: empty name between commas")
    return list(dict.fromkeys(names))


def _rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read()
    except OSError as exc:
        raise IncidentError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise IncidentError(f"{path}: not UTF-8 text (expected a CSV file)") from None
    try:
        dialect = csv.Sniffer().sniff(sample.splitlines()[0] if sample else "", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel  # type: ignore[assignment]
    reader = csv.DictReader(sample.splitlines(), dialect=dialect)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise IncidentError(f"{path}: header {','.join(header) or '(none)'} lacks column(s) "
                            f"{', '.join(missing)} (expected a header line with {', '.join(required)})")
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, str]]] = []
    for row in reader:
        if None in row:
            raise IncidentError(f"{path}:{reader.line_num}: more fields than the header has columns")
        clean = {k: (v or "").strip() for k, v in row.items()}
        if not any(clean.values()):
            continue
        rows.append((reader.line_num, clean))
    if not rows:
        raise IncidentError(f"{path}: no data rows (expected at least one line after the header)")
    return rows


def _username(path: Path, line: int, value: str) -> str:
    if not value:
        raise IncidentError(f"{path}:{line}: empty username")
    if value != value.lower() or any(c.isspace() for c in value):
        raise IncidentError(f"{path}:{line}: username {value!r} is not valid "
                            "(Moodle usernames are lowercase, without spaces)")
    return value


def read_user_csv(path: Path) -> list[str]:
    """A CSV with a `username` column (other columns ignored)."""
    names = [_username(path, line, row["username"]) for line, row in _rows(path, ("username",))]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class RenewalRow:
    school: str
    username: str
    requested: date
    account_type: str
    source: str                   # file:line, for reports


def read_renewal_csv(path: Path, school: str) -> list[RenewalRow]:
    """A school's renewal list as sent in June: username, requested (YYYY-MM-DD:
    the day the school asked for the account or its renewal), optional account_type."""
    out: list[RenewalRow] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path, ("username", "requested")):
        name = _username(path, line, row["username"])
        if name in seen:
            raise IncidentError(f"{path}:{line}: username {name!r} already on line {seen[name]}")
        seen[name] = line
        try:
            requested = date.fromisoformat(row["requested"])
        except ValueError:
            raise IncidentError(f"{path}:{line}: requested {row['requested']!r} is not a date "
                                "(expected YYYY-MM-DD)") from None
        out.append(RenewalRow(school, name, requested, row.get("account_type", ""), f"{path.name}:{line}"))
    return out


def parse_renewals_option(values: list[str], school_codes: set[str]) -> dict[str, Path]:
    """`--renewals school=FILE` (repeatable) -> {school: path}."""
    found: dict[str, Path] = {}
    for value in values:
        code, sep, file = value.partition("=")
        if not sep or not code or not file:
            raise IncidentError(f"--renewals {value!r}: expected SCHOOL=FILE.csv")
        if code not in school_codes:
            raise IncidentError(f"--renewals {value!r}: unknown school {code!r} "
                                f"(one of: {', '.join(sorted(school_codes))})")
        if code in found:
            raise IncidentError(f"--renewals: school {code!r} given twice")
        found[code] = Path(file)
    return found
