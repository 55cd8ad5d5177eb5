"""The one byte formatter: decimal units (1 GB = 10^9 bytes), as the agreement
counts storage. Every report and progress line uses it."""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float, *, digits: int = 1) -> str:
    """`format_bytes(41_000_000_000)` -> '41.0 GB'; bytes below 1 kB stay whole."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.{digits}f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def gb(n: float, *, digits: int | None = None) -> str:
    """Decimal gigabytes without the unit, for table columns headed 'GB'
    (`digits=None`: as short as exact, e.g. '41' or '2.5')."""
    return f"{n / 1e9:g}" if digits is None else f"{n / 1e9:.{digits}f}"
