"""Progress lines for long transfers, on stderr, at most about one a second,
and the human sizes/durations used in reports."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
    """Thread-safe counter of bytes and items with a throttled status line."""

    def __init__(self, label: str, total_bytes: int, total_items: int = 0, *, out: TextIO | None = None,
                 interval: float = 1.0) -> None:
        self.label, self.total_bytes, self.total_items = label, total_bytes, total_items
        self.done_bytes = 0
        self.done_items = 0
        self.started = time.monotonic()
        self._last = 0.0
        self._interval = interval
        self._out = out if out is not None else sys.stderr
        self._lock = threading.Lock()

    def add(self, nbytes: int, items: int = 0) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self.done_items += items
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        pct = f" {100 * self.done_bytes / self.total_bytes:5.1f}%" if self.total_bytes else ""
        items = f" {self.done_items}/{self.total_items} objects" if self.total_items else ""
        eta = ""
        if rate > 0 and self.total_bytes > self.done_bytes:
            eta = f" eta {human_seconds((self.total_bytes - self.done_bytes) / rate)}"
        print(f"  {self.label}:{pct} {human_bytes(self.done_bytes)}/{human_bytes(self.total_bytes)}{items} "
              f"{human_bytes(rate)}/s{eta}", file=self._out, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
