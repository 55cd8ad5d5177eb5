"""Reading inventory YAML strictly, and walking it with the key path at hand.

Every failure is an InventoryError that names the file, the dotted key path
(`schools[3].code`) and the offending value, so that an operator can fix the
inventory without reading Python.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml

from moodleops import REPO_ROOT
from moodleops.inventory.errors import InventoryError
from moodleops.inventory.model import MonthDay


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def display_path(path: Path) -> str:
    """The path as an operator types it: relative to the checkout when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and leaves timestamps as text.

    PyYAML keeps the last of two equal keys, so a school pasted twice or a key
    repeated by mistake would silently win; here it is an error. Timestamps stay
    text because `2024-02-30` would otherwise fail inside PyYAML with a bare
    ValueError and no line; the validators parse dates themselves.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[object] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader reports unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Kept as their text: timestamps (see above), and Ansible's `!vault` (inline
# encrypted value) and `!unsafe` tags, which group_vars may legally use.
for _tag in ("tag:yaml.org,2002:timestamp", "!vault", "!unsafe"):
    _StrictLoader.add_constructor(
        _tag, lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]


def load_yaml(path: Path) -> Any:
    """Parse one YAML file; syntax errors become InventoryError with the line."""
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(shown, "<file>", "missing", "the file must exist") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(shown, "<file>", str(exc), "UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if mark is None:
            raise InventoryError(shown, "<yaml>", problem, "well-formed YAML") from None
        lines = text.splitlines()
        source = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise InventoryError(shown, f"line {mark.line + 1}", source,
                             f"YAML syntax error: {problem}") from None


_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Node:
    """A value read from `file` at `key`, with typed accessors that fail loudly."""

    file: str
    key: str
    value: Any

    def fail(self, allowed: str) -> NoReturn:
        raise InventoryError(self.file, self.key or "<document>", self.value, allowed)

    @property
    def missing(self) -> bool:
        return self.value is MISSING

    def _sub(self, name: str | int, value: Any) -> Node:
        key = f"{self.key}[{name}]" if isinstance(name, int) else f"{self.key}.{name}" if self.key else name
        return Node(self.file, key, value)

    # -- containers ---------------------------------------------------------

    def mapping(self, allowed: tuple[str, ...] | None = None, what: str = "") -> dict[str, Any]:
        if not isinstance(self.value, dict):
            self.fail("a mapping" if not self.missing else "required (a mapping)")
        if allowed is not None:
            for k, v in self.value.items():
                if k not in allowed:
                    where = f" in {what}" if what else ""
                    self._sub(str(k), v).fail(f"unknown key{where}; allowed keys: {', '.join(allowed)}")
        return self.value

    def get(self, name: str) -> Node:
        return self._sub(name, self.mapping().get(name, MISSING))

    def items(self) -> list[tuple[str, Node]]:
        return [(str(k), self._sub(str(k), v)) for k, v in self.mapping().items()]

    def seq(self, min_len: int = 0) -> list[Node]:
        if not isinstance(self.value, list):
            self.fail("required (a list)" if self.missing else "a list")
        if len(self.value) < min_len:
            self.fail(f"a list of at least {min_len} item(s)")
        return [self._sub(i, v) for i, v in enumerate(self.value)]

    # -- scalars ------------------------------------------------------------

    def text(self, pattern: re.Pattern[str] | None = None, allowed: str = "",
             default: str | None = None) -> str:
        """A non-empty string; `allowed` describes the pattern for the error message."""
        if self.missing and default is not None:
            return default
        desc = allowed or "a non-empty string"
        if not isinstance(self.value, str) or not self.value.strip():
            self.fail(("required: " if self.missing else "") + desc)
        if pattern is not None and not pattern.match(self.value):
            self.fail(desc)
        return self.value

    def integer(self, minimum: int | None = None, maximum: int | None = None,
                default: int | None = None, allowed: str = "") -> int:
        if self.missing and default is not None:
            return default
        desc = allowed or _range_desc("an integer", minimum, maximum)
        # bool is an int in Python, but `students: yes` is a typo, not a count.
        if type(self.value) is not int:
            self.fail(("required: " if self.missing else "") + desc)
        if (minimum is not None and self.value < minimum) or (maximum is not None and self.value > maximum):
            self.fail(desc)
        return self.value

    def ratio(self) -> float:
        """A number strictly between 0 and 1."""
        if type(self.value) not in (int, float) or not 0 < self.value < 1:
            self.fail("a number strictly between 0 and 1")
        return float(self.value)

    def decimal(self, allowed: str = "a number") -> Decimal:
        # str() first: Decimal(0.1) would carry the binary float's noise.
        if type(self.value) not in (int, float, str):
            self.fail(allowed)
        try:
            number = Decimal(str(self.value).strip())
        except InvalidOperation:
            self.fail(allowed)
        if not number.is_finite():
            self.fail(allowed)
        return number

    def date(self) -> date:
        allowed = "a real calendar date, YYYY-MM-DD"
        if not isinstance(self.value, str) or not _ISO_DATE.match(self.value):
            self.fail(allowed)
        try:
            return date.fromisoformat(self.value)
        except ValueError:
            self.fail(allowed)

    def month_day(self) -> MonthDay:
        # 02-29 is refused: a yearly deadline must exist every year.
        allowed = "a month-day \"MM-DD\" that exists every year (quoted)"
        m = _MONTH_DAY.match(self.value) if isinstance(self.value, str) else None
        if m is None:
            self.fail(allowed)
        month, day = int(m.group(1)), int(m.group(2))
        try:
            date(2023, month, day)  # a non-leap year
        except ValueError:
            self.fail(allowed)
        return MonthDay(month, day)

    def version(self, pattern: re.Pattern[str], allowed: str) -> tuple[Decimal, str]:
        """A Moodle version number: its exact text and its value.

        Integers are accepted (YAML reads 2023110900 as one); floats are not,
        because YAML turns 2022112811.00 into 2022112811.0 and the written text,
        which Moodle compares, would be lost.
        """
        if type(self.value) is int:
            text = str(self.value)
        elif isinstance(self.value, str):
            text = self.value
        else:
            self.fail(f"{allowed}, written as a quoted string")
        if not pattern.match(text):
            self.fail(allowed)
        return Decimal(text), text


def _range_desc(what: str, minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{what} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{what} >= {minimum}"
    if maximum is not None:
        return f"{what} <= {maximum}"
    return what
