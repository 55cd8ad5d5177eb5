"""The health and abuse reads in a long-lived child process.

A read is ~100 ms of waiting on PostgreSQL but also ~10 ms of Python (psycopg
rows, aggregation, php-fpm's status page) holding the GIL; in the serving
process that delays the scrape threads at every GIL hand-off, and a scrape
measured over HTTP during reads reached 117-191 ms where the same machine gave
51-64 ms idle (load 13 on 2 cores). In a child, the serving process only
receives the result. One child for the exporter's life ('spawn': the parent has
threads), started again when it died or went silent."""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from moodleops.exporters.watch_model import WatchConfig, WatchResult
from moodleops.exporters.watch_read import WatchError, read


def _child(conn: Connection, reader: Callable[[WatchConfig], WatchResult]) -> None:
    """Child body: for each configuration received, ("ok", result), ("error", message)
    or ("crash", traceback). Ends when the parent closes its end (or dies)."""
    # Background work: on a busy host the serving process gets the CPU first.
    os.nice(10)
    while True:
        try:
            cfg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", reader(cfg)))
        except WatchError as exc:
            conn.send(("error", str(exc)))
        except Exception:  # noqa: BLE001 - a bug: its traceback goes to the parent, which logs it
            conn.send(("crash", traceback.format_exc()))


class ChildReader:
    """reader(cfg) in the child; a WatchError there is raised here with its message."""

    def __init__(self, reader: Callable[[WatchConfig], WatchResult] = read, *, margin_s: float = 30.0) -> None:
        """reader: a module-level function (the child imports it by name)."""
        self._reader = reader
        self._margin_s = margin_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None

    def _ensure(self) -> Connection:
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            return self._conn
        self.close()
        ours, theirs = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(target=_child, args=(theirs, self._reader), name="moodleops-watch-read",
                                       daemon=True)
        self._proc.start()
        theirs.close()
        self._conn = ours
        return ours

    def __call__(self, cfg: WatchConfig) -> WatchResult:
        conn = self._ensure()
        # Longest legitimate silence: connecting, then each of the read's statements up to
        # its statement timeout, and the php-fpm status request.
        patience = cfg.connect_timeout_s + 8 * cfg.statement_timeout_ms / 1000 + self._margin_s
        try:
            conn.send(cfg)
            if not conn.poll(patience):
                self.close()
                raise WatchError(f"watch read process silent for {patience:.0f} s: killed (started again "
                                 "for the next read)")
            kind, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = None
            if self._proc is not None:
                self._proc.join(5)    # the pipe closes a moment before the exit status is known
                code = self._proc.exitcode
            self.close()
            raise WatchError(f"watch read process died without a result (exit status {code}): started "
                             "again for the next read") from None
        if kind == "ok":
            return payload   # type: ignore[no-any-return]
        if kind == "error":
            raise WatchError(payload)
        raise RuntimeError(f"watch read process crashed:\n{payload}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
