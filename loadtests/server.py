"""The server side of a run, sampled while it plays: each web node's php-fpm
pool (its status page), PostgreSQL's activity (pg_stat_activity, read-only),
each node's CPU (/proc/stat on this machine, node_exporter on the others)
and the load generator's own CPU (the Locust processes). The summary gets the
samples and, per resource, when it first saturated, so a report says what
limited the run: the php-fpm pool, a node's CPU, the database, or Locust.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psycopg
import requests
import yaml

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory, is_loopback
from moodleops.site import Site, SiteError

CPU_SATURATED = 0.90            # a node busier than this is CPU-bound
GENERATOR_SATURATED = 0.90      # a Locust process above this (of one core) lags behind its users
CLK_TCK = os.sysconf("SC_CLK_TCK")


def role_default(role: str, name: str) -> Any:
    """A value of a role's documented API (defaults/main.yml): where the status
    page and node_exporter are is the playbooks' fact, read from there."""
    path = REPO_ROOT / "playbooks" / "roles" / role / "defaults" / "main.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))[name]


def _proc_stat_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of this machine."""
    with open("/proc/stat", encoding="ascii") as fh:
        f = [float(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0.0)
    return sum(f) - idle, sum(f)


def _exporter_cpu(url: str) -> tuple[float, float]:
    """(busy, total) CPU seconds from node_exporter's node_cpu_seconds_total."""
    busy = total = 0.0
    for line in requests.get(url, timeout=2).text.splitlines():
        if line.startswith("node_cpu_seconds_total{"):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            if 'mode="idle"' not in line and 'mode="iowait"' not in line:
                busy += value
    return busy, total


def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (float(f[11]) + float(f[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Node:
    name: str
    address: str
    fpm_url: str | None
    cpu: str                      # "local" or a node_exporter URL
    last: tuple[float, float] | None = None


@dataclass
class ServerSampler:
    """Samples every `interval_s` in a thread between start() and stop()."""

    nodes: list[Node]
    site: Site | None
    interval_s: float = 2.0
    pids: list[int] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _pid_cpu: dict[int, float] = field(default_factory=dict)
    _db: Any = None

    @classmethod
    def for_inventory(cls, inv: Inventory, site: Site, target: str, interval_s: float = 2.0) -> ServerSampler:
        status = str(role_default("platform_defaults", "php_fpm_status_path"))
        exporter_port = int(role_default("platform_defaults", "node_exporter_port"))
        parts = urlsplit(target)
        nodes: list[Node] = []
        seen: set[str] = set()
        for group in ("web", "db_primary"):
            for h in inv.group(group):
                if h.address in seen:
                    continue
                seen.add(h.address)
                local = is_loopback(h.address)
                # On this machine the vhost is the target's; elsewhere each web node's own nginx.
                base = f"{parts.scheme}://{parts.netloc}" if local else f"http://{h.address}"
                nodes.append(Node(h.name, h.address, base + status + "?json" if group == "web" else None,
                                  "local" if local else f"http://{h.address}:{exporter_port}/metrics"))
        return cls(nodes, site, interval_s)

    # -- the thread -------------------------------------------------------------------

    def start(self, pids: list[int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._pid_cpu = {p: _proc_cpu_s(p) for p in pids}
        for n in self.nodes:
            n.last = self._cpu(n)
        self._thread = threading.Thread(target=self._loop, name="server-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._db is not None:
            self._db.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    # -- one sample ---------------------------------------------------------------------

    def _cpu(self, n: Node) -> tuple[float, float] | None:
        try:
            return _proc_stat_cpu() if n.cpu == "local" else _exporter_cpu(n.cpu)
        except (OSError, ValueError, requests.RequestException) as exc:
            self.errors[f"cpu {n.name}"] = f"{n.cpu}: {exc}"[:200]
            return None

    def _fpm(self, n: Node) -> dict[str, Any] | None:
        try:
            st = requests.get(n.fpm_url or "", timeout=2).json()
            return {"active": st["active processes"], "idle": st["idle processes"],
                    "total": st["total processes"], "listen_queue": st["listen queue"],
                    "max_children_reached": st["max children reached"]}
        except (requests.RequestException, ValueError, KeyError) as exc:
            self.errors[f"php-fpm {n.name}"] = f"{n.fpm_url}: {exc}"[:200]
            return None

    def _database(self) -> dict[str, Any] | None:
        site = self.site
        if site is None:
            return None
        try:
            if self._db is None:
                self._db = psycopg.connect(host=site.db_host, port=site.db_port, dbname=site.db_name,
                                           user=site.db_ro_user, password=site.secret("db_ro_password"),
                                           connect_timeout=5, autocommit=True,
                                           options="-c default_transaction_read_only=on -c statement_timeout=2000")
            row = self._db.execute(
                """SELECT count(*), count(*) FILTER (WHERE state = 'active'),
                          count(*) FILTER (WHERE wait_event_type = 'Lock'),
                          current_setting('max_connections')::int
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()""",
            ).fetchone()
            return {"connections": row[0], "active": row[1], "lock_waits": row[2], "max_connections": row[3]}
        except (psycopg.Error, SiteError) as exc:
            self.errors["database"] = " ".join(str(exc).split())[:200]
            if self._db is not None:
                self._db.close()
                self._db = None
            return None

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {"t": round(now - self._t0, 1), "cpu": {}, "php_fpm": {}}
        for n in self.nodes:
            cur = self._cpu(n)
            if cur is not None and n.last is not None and cur[1] > n.last[1]:
                out["cpu"][n.name] = round((cur[0] - n.last[0]) / (cur[1] - n.last[1]), 3)
            n.last = cur
            if n.fpm_url:
                fpm = self._fpm(n)
                if fpm is not None:
                    out["php_fpm"][n.name] = fpm
        out["db"] = self._database()
        gen = {}
        for pid in self.pids:
            cpu = _proc_cpu_s(pid)
            gen[str(pid)] = round((cpu - self._pid_cpu.get(pid, cpu)) / self.interval_s, 3)
            self._pid_cpu[pid] = cpu
        out["generator_cpu"] = gen
        return out

    # -- reading the samples ---------------------------------------------------------------

    def report(self, cores: int | None = None) -> dict[str, Any]:
        """Samples plus, per resource, the first time it saturated."""
        cores = cores or os.cpu_count() or 1
        first: dict[str, float] = {}
        reached0: dict[str, int] = {}

        def mark(what: str, t: float) -> None:
            first.setdefault(what, t)

        for s in self.samples:
            t = float(s["t"])
            for node, busy in s["cpu"].items():
                if busy >= CPU_SATURATED:
                    mark(f"cpu:{node}", t)
            for node, fpm in s["php_fpm"].items():
                base = reached0.setdefault(node, int(fpm["max_children_reached"]))
                if fpm["listen_queue"] > 0 or int(fpm["max_children_reached"]) > base:
                    mark(f"php-fpm:{node}", t)
            db = s.get("db")
            if db and (db["active"] > cores or db["lock_waits"] > 0
                       or db["connections"] >= 0.9 * db["max_connections"]):
                mark("database", t)
            if any(v >= GENERATOR_SATURATED for v in s["generator_cpu"].values()):
                mark("load-generator", t)
        order = sorted(first.items(), key=lambda kv: kv[1])
        return {"interval_s": self.interval_s, "nodes": [n.name for n in self.nodes],
                "samples": self.samples, "errors": self.errors,
                "saturation": dict(order), "first_saturated": order[0][0] if order else None,
                "peaks": _peaks(self.samples)}


def _peaks(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest value of each series, for the one-line report."""
    out: dict[str, Any] = {}
    for s in samples:
        for node, busy in s["cpu"].items():
            out[f"cpu:{node}"] = max(out.get(f"cpu:{node}", 0.0), busy)
        for node, fpm in s["php_fpm"].items():
            out[f"php-fpm-active:{node}"] = max(out.get(f"php-fpm-active:{node}", 0), fpm["active"])
            out[f"php-fpm-queue:{node}"] = max(out.get(f"php-fpm-queue:{node}", 0), fpm["listen_queue"])
        if s.get("db"):
            out["db-active"] = max(out.get("db-active", 0), s["db"]["active"])
            out["db-connections"] = max(out.get("db-connections", 0), s["db"]["connections"])
        out["generator-cpu"] = max([out.get("generator-cpu", 0.0), *s["generator_cpu"].values()])
    return out
