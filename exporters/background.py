"""What every moodleops exporter shares: a background thread doing the
expensive work on its own schedule, an HTTP server answering /metrics from
what that work left in memory, and `serve` commands that run until a signal.

The storage and the health exporters differ only in what one refresh does and
how a scrape's body is made; the cadence, the staleness rule, the server and
the signal handling are here, once."""

from __future__ import annotations

import http.server
import re
import signal
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>[0-9]{1,5})$")


def parse_listen(text: str) -> tuple[str, int]:
    """--listen HOST:PORT or [V6]:PORT; ValueError with the one line to show."""
    m = _LISTEN.match(text)
    port = int(m.group("port")) if m else 0
    if not m or not 1 <= port <= 65535:
        raise ValueError(f"--listen {text!r} is not valid (HOST:PORT with a port 1-65535, "
                         "e.g. 127.0.0.1:9851 or [::1]:9851)")
    return (m.group("v6") or m.group("host")), port


class BackgroundExporter(ABC):
    """refresh() runs every interval_s seconds in a daemon thread (fixed cadence
    from the start of each run; a slow run delays the next, never stacks)."""

    thread_name = "moodleops-exporter"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def refresh(self) -> bool:
        """One run of the expensive work; True when it succeeded. Must not raise."""

    @abstractmethod
    def last_success(self) -> tuple[bool, float, bool]:
        """(anything to serve yet, unix time of the last success, the last attempt succeeded)."""

    @abstractmethod
    def exposition(self) -> bytes:
        """A scrape's body (exposition format), from memory only."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.refresh()
            self._stop.wait(max(1.0, self.interval_s - (time.monotonic() - t0)))

    def is_stale(self, now: float | None = None) -> bool:
        have, last, ok = self.last_success()
        now = time.time() if now is None else now
        return not have or not ok or now - last > 2 * self.interval_s + 60

    def serve(self, host: str, port: int) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
        return serve_metrics(host, port, self.exposition, name=f"{self.thread_name}-http")


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve_metrics(host: str, port: int, body: Callable[[], bytes], *,
                  name: str = "moodleops-exporter-http") -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    """Serve body() on /metrics (and /) until the returned server is shut down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            data = body()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = (_V6Server if ":" in host else http.server.ThreadingHTTPServer)((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server, thread


def serve_until_signal(exporter: BackgroundExporter, host: str, port: int, *, listen: str, doing: str) -> int:
    """The `serve` command's body once its input is valid: bind, say where, refresh
    in the background until SIGTERM or SIGINT. Exit status 1: the address could not be bound."""
    try:
        exporter.serve(host, port)
    except OSError as exc:
        print(f"moodleops: error: cannot listen on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"serving http://{listen}/metrics; {doing}", file=sys.stderr)
    exporter.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    exporter.stop()
    return 0
