"""Tables and progress for people, with rich: one look for every command.

Tables render to plain text (no colour, ASCII rules) so that they read the same
in a terminal, a pipe and a cron mail. Progress is a live bar on a terminal and
a throttled line on stderr otherwise (cron logs keep a trace, not escapes)."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from moodleops.units import format_bytes

# Rules under the header and above a total line; no frame.
RULES = box.Box("    \n    \n -- \n    \n -- \n    \n    \n    \n", ascii=True)


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = (),
                total: Sequence[str] | None = None) -> list[str]:
    """Rows under a header, numeric columns right-aligned, an optional total row
    below a rule; returns the lines (no trailing spaces)."""
    right = set(numeric)
    t = Table(box=RULES, show_edge=False, pad_edge=False, highlight=False)
    for i, name in enumerate(header):
        t.add_column(name, justify="right" if i in right else "left", no_wrap=True)
    body = [list(r) for r in rows]
    for i, r in enumerate(body):
        t.add_row(*r, end_section=total is not None and i == len(body) - 1)
    if total is not None:
        t.add_row(*total)
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, force_terminal=False, highlight=False,
            emoji=False, markup=False).print(t)
    return [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]


class Transfer:
    """Bytes (and objects) of one long transfer: a rich bar on a terminal, else
    a line on stderr at most every `interval` seconds. Thread-safe (rich's task
    updates are; the fallback takes its own lock through `add`'s single writer)."""

    def __init__(self, label: str, total_bytes: int, total_items: int = 0, *, out: TextIO | None = None,
                 interval: float = 1.0) -> None:
        import threading

        self.label, self.total_bytes, self.total_items = label, total_bytes, total_items
        self.done_bytes = self.done_items = 0
        self.started = time.monotonic()
        self._out = out if out is not None else sys.stderr
        self._interval, self._last = interval, 0.0
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        if self._out.isatty():
            self._bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(file=self._out), transient=False)
            self._task = self._bar.add_task(label, total=total_bytes or None)
            self._bar.start()

    def add(self, nbytes: int, items: int = 0) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self.done_items += items
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done_bytes)
                if self.total_bytes and self.done_bytes >= self.total_bytes:
                    self._bar.stop()
                return
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._line(now)

    def _line(self, now: float) -> None:
        rate = self.done_bytes / max(now - self.started, 1e-6)
        pct = f" {100 * self.done_bytes / self.total_bytes:5.1f}%" if self.total_bytes else ""
        items = f" {self.done_items}/{self.total_items} objects" if self.total_items else ""
        eta = ""
        if rate > 0 and self.total_bytes > self.done_bytes:
            eta = f" eta {(self.total_bytes - self.done_bytes) / rate:.0f} s"
        print(f"  {self.label}:{pct} {format_bytes(self.done_bytes)}/{format_bytes(self.total_bytes)}{items} "
              f"{format_bytes(rate)}/s{eta}", file=self._out, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
