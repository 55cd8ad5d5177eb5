"""Next academic year's sizing from a load-test summary and the population.

The load-test summary (JSON, schema "moodleops.loadtest-summary/1", written by
the load model or by hand from its results; docs/capacity.md) says what one
php-fpm worker sustains and how p95 grows with concurrent users:

    {"schema": "moodleops.loadtest-summary/1",
     "php_fpm_workers": 8,                  # workers serving the test (all nodes)
     "throughput_rps_per_worker": 3.2,      # requests/s per worker at saturation
     "requests_per_user_per_minute": 4.0,   # the model's demand per active user
     "p95_by_users": [{"users": 20, "p95_ms": 240}, {"users": 40, "p95_ms": 610}, ...]}

Every other number (population growth, peak ratio, p95 target, headroom, node
and database shapes) comes from inventory/capacity.yml.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moodleops.capacity.config import SizingParams
from moodleops.capacity.errors import CapacityError, read_schema_doc

from moodleops.inventory import Inventory

SCHEMA = "moodleops.loadtest-summary/1"
# What `moodleops loadtest run` writes (loadtests/summary.py): one run, one point.
RUN_SCHEMA = "moodleops-loadtest-summary/2"


@dataclass(frozen=True)
class LoadPoint:
    users: float
    p95_ms: float


@dataclass(frozen=True)
class LoadSummary:
    php_fpm_workers: int
    throughput_rps_per_worker: float
    requests_per_user_per_minute: float
    p95_by_users: tuple[LoadPoint, ...]
    source: str
    notes: tuple[str, ...] = ()


def _positive(doc: dict[str, Any], key: str, where: str) -> float:
    value = doc.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise CapacityError(f"{where}: {key} {value!r} is not valid (a number > 0)")
    return float(value)


def read_summary(path: Path) -> LoadSummary:
    where = str(path)
    doc = read_schema_doc(path, SCHEMA, "load-test summary", "a load-test summary, see docs/capacity.md")
    workers = doc.get("php_fpm_workers")
    if type(workers) is not int or workers < 1:
        raise CapacityError(f"{where}: php_fpm_workers {workers!r} is not valid (an integer >= 1)")
    curve = doc.get("p95_by_users")
    if not isinstance(curve, list) or not curve:
        raise CapacityError(f"{where}: p95_by_users {curve!r} is not valid (a non-empty list of "
                            "{users, p95_ms})")
    points = []
    for i, p in enumerate(curve):
        if not isinstance(p, dict):
            raise CapacityError(f"{where}: p95_by_users[{i}] is not valid (an object {{users, p95_ms}})")
        points.append(LoadPoint(_positive(p, "users", f"{where}: p95_by_users[{i}]"),
                                _positive(p, "p95_ms", f"{where}: p95_by_users[{i}]")))
    return LoadSummary(workers, _positive(doc, "throughput_rps_per_worker", where),
                       _positive(doc, "requests_per_user_per_minute", where),
                       tuple(sorted(points, key=lambda p: p.users)), where)


@dataclass(frozen=True)
class Sizing:
    population: int
    peak_users: int
    demand_rps: float
    workers_for_throughput: int
    users_per_worker: float
    users_per_worker_is_lower_bound: bool
    workers_for_latency: int
    workers_needed: int            # before headroom
    headroom: float
    workers: int                   # with headroom
    workers_per_node: int
    node_limit: str                # what limits workers per node: cpu or memory
    web_nodes: int
    db_max_connections: int
    db_ram_mb: int
    db_shared_buffers_mb: int
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def size(inv: Inventory, load: LoadSummary, p: SizingParams) -> Sizing:
    notes: list[str] = list(load.notes)
    population = math.ceil(sum(s.students + s.trainers for s in inv.schools) * (1 + p.population_growth))
    peak_users = math.ceil(population * p.peak_active_ratio)
    demand_rps = peak_users * load.requests_per_user_per_minute / 60
    by_throughput = math.ceil(demand_rps / (load.throughput_rps_per_worker * p.target_utilisation))

    within = [pt for pt in load.p95_by_users if pt.p95_ms <= p.p95_target_ms]
    if not within:
        raise CapacityError(f"{load.source}: no measured point keeps p95 <= {p.p95_target_ms:g} ms "
                            f"(lowest p95 {load.p95_by_users[0].p95_ms:g} ms at {load.p95_by_users[0].users:g} "
                            "users): the load test says the platform is already too slow; fix that first")
    best = max(within, key=lambda pt: pt.users)
    lower_bound = best is load.p95_by_users[-1]
    if lower_bound:
        notes.append(f"the load test never exceeded p95 {p.p95_target_ms:g} ms (up to {best.users:g} users): "
                     "users per worker is a lower bound, the sizing errs on the safe side")
    users_per_worker = best.users / load.php_fpm_workers
    by_latency = math.ceil(peak_users / users_per_worker)

    needed = max(by_throughput, by_latency)
    workers = math.ceil(needed * (1 + p.headroom))
    node = p.web_node
    cpu_limit = node.cores * node.workers_per_core
    mem_limit = (node.ram_mb - node.reserved_ram_mb) // node.php_worker_memory_mb
    per_node = min(cpu_limit, mem_limit)
    web_nodes = max(p.min_web_nodes, math.ceil(workers / per_node))
    if web_nodes == p.min_web_nodes and math.ceil(workers / per_node) < p.min_web_nodes:
        notes.append(f"{p.min_web_nodes} web nodes is the redundancy minimum (capacity.yml sizing.min_web_nodes)")

    # Moodle opens one connection per request (no persistent connections by
    # default): at most one per php-fpm worker, on every node, plus the others.
    max_conn = math.ceil((web_nodes * per_node + p.db.reserved_connections) * (1 + p.headroom))
    hot_mb = p.db.database_bytes * p.db.hot_fraction / 2**20
    conn_mb = max_conn * p.db.per_connection_mb
    raw_ram = max(hot_mb / (1 - p.db.shared_buffers_ratio), hot_mb) + conn_mb + p.db.os_reserved_mb
    ram = math.ceil(raw_ram * (1 + p.headroom) / p.db.ram_step_mb) * p.db.ram_step_mb
    return Sizing(population, peak_users, round(demand_rps, 2), by_throughput, round(users_per_worker, 2),
                  lower_bound, by_latency, needed, p.headroom, workers, per_node,
                  "cpu" if cpu_limit <= mem_limit else "memory", web_nodes, max_conn, ram,
                  int(ram * p.db.shared_buffers_ratio), tuple(notes))


def to_text(s: Sizing, load: LoadSummary, p: SizingParams) -> str:
    h = f"{p.headroom:.0%}"
    lines = [
        "Sizing for next academic year",
        f"  population:      {s.population} accounts (inventory + {p.population_growth:.0%} growth)",
        (f"  busiest hour:    {s.peak_users} active users ({p.peak_active_ratio:.0%} of accounts), "
        f"{s.demand_rps:g} requests/s ({load.requests_per_user_per_minute:g} per user per minute)"),
        (f"  load test:       {load.source}: {load.throughput_rps_per_worker:g} req/s per worker; "
        f"p95 <= {p.p95_target_ms:g} ms up to {s.users_per_worker:g} users per worker"),
        (f"  php-fpm workers: {s.workers_needed} needed (throughput at {p.target_utilisation:.0%} use: "
        f"{s.workers_for_throughput}; p95 target: {s.workers_for_latency}) + {h} headroom = {s.workers}"),
        (f"  web nodes:       {s.web_nodes} x ({p.web_node.cores} cores, {p.web_node.ram_mb} MB), "
        f"{s.workers_per_node} workers each (limited by {s.node_limit}): pm.max_children = {s.workers_per_node}"),
        (f"  database:        max_connections {s.db_max_connections} (one per worker on every node + "
        f"{p.db.reserved_connections} reserved, + {h}); RAM {s.db_ram_mb} MB, "
        f"shared_buffers {s.db_shared_buffers_mb} MB (includes {h} headroom)"),
    ]
    lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


def _served_by(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The peak window's figures per web node that answered (`nodes`, from the
    load balancer's header), when the run went through one."""
    nodes = (doc.get("peak_window") or {}).get("nodes") or {}
    try:
        return {str(n): {"rps": float(f["rps"]), "p95_ms": float(f["p95_ms"]), "requests": int(f["requests"])}
                for n, f in nodes.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CapacityError(f"peak_window.nodes: a field is missing or malformed ({exc})") from None


def _peak_workers(doc: dict[str, Any]) -> tuple[int, dict[str, tuple[int, float]]]:
    """php-fpm workers the pools held during the run's peak window (sum over
    web nodes of each pool's largest size then), and per node (workers, CPU peak)."""
    server, peak = doc.get("server") or {}, doc.get("peak_window") or {}
    lo, hi = float(peak.get("from_s", 0)), float(peak.get("to_s", math.inf))
    per_node: dict[str, tuple[int, float]] = {}
    for smp in server.get("samples") or []:
        if not lo <= float(smp.get("t", -1)) <= hi:
            continue
        for node, fpm in (smp.get("php_fpm") or {}).items():
            w, c = per_node.get(node, (0, 0.0))
            per_node[node] = (max(w, int(fpm.get("total", 0))), max(c, float((smp.get("cpu") or {}).get(node, 0.0))))
    return sum(w for w, _ in per_node.values()), per_node


def from_runs(paths: list[Path], php_fpm_workers: int | None) -> LoadSummary:
    """A sizing summary from `moodleops loadtest run` summaries (one point per
    run, best several runs at growing --users): p95 vs users from each run's
    peak window; throughput per worker = the highest peak-window request rate
    / the php-fpm workers the pools held in that window (sampled by the run;
    `php_fpm_workers` when the run has no samples) — a lower bound of what a
    worker sustains; demand per user = the load model's pages per second per
    concurrent user at its peak. Runs on several web nodes (the multi-host
    rehearsal) add their per-node figures as notes; without samples, the
    given workers count per node that answered."""
    points, best, demand = [], (0.0, 0, ""), None
    notes: list[str] = []
    for path in paths:
        doc = read_schema_doc(path, RUN_SCHEMA, "load-test run summary", "moodleops loadtest run")
        try:
            users = float(doc["users"])
            window = doc.get("peak_window") or {}
            figures = window.get("totals") or doc["totals"]
            p95, rps = float(figures["p95_ms"]), float(figures["rps"])
            model = doc["model"]
            demand = demand or float(model["peak_pages_per_s"]) / float(model["peak_concurrent"]) * 60
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise CapacityError(f"{path}: a field is missing or malformed ({exc})") from None
        if users <= 0 or p95 <= 0:
            raise CapacityError(f"{path}: users {users:g} / p95 {p95:g} ms is not valid (a run that sent requests)")
        workers, per_node = _peak_workers(doc)
        served = _served_by(doc)
        how = "sampled in its peak window"
        if workers < 1:
            if php_fpm_workers is None or php_fpm_workers < 1:
                raise CapacityError(f"{path}: the run has no php-fpm samples; php-fpm workers "
                                    f"{php_fpm_workers!r} is not valid (an integer >= 1, --php-fpm-workers)")
            # Per node (php_fpm_max_children), times the nodes that answered.
            nodes = max(1, len(served))
            workers, how = php_fpm_workers * nodes, f"given: {php_fpm_workers} per node x {nodes} node(s)"
        if served:
            notes.append(f"{path.name}: peak window per web node (the load balancer's answer header): " + ", ".join(
                f"{n} {f['rps']:.2f} req/s, p95 {f['p95_ms']:g} ms, {f['requests']} requests"
                for n, f in sorted(served.items())))
        if len(per_node) > 1:
            notes.append(f"{path.name}: {len(per_node)} web nodes, " + ", ".join(
                f"{n} {w} workers / CPU peak {c:.0%}" for n, (w, c) in sorted(per_node.items()))
                + f"; {rps / len(per_node):.2f} req/s per node at the peak")
        points.append(LoadPoint(users, p95))
        if rps / workers > best[0] or not best[1]:
            best = (rps / workers, workers, how)
    if best[0] <= 0 or not demand:
        raise CapacityError(f"{', '.join(map(str, paths))}: no request rate measured (rps 0)")
    notes.append(f"throughput per worker from the peak window over {best[1]} php-fpm workers ({best[2]})")
    return LoadSummary(best[1], best[0], demand, tuple(sorted(points, key=lambda p: p.users)),
                       ", ".join(map(str, paths)), tuple(notes))


def read_any(paths: list[Path], php_fpm_workers: int | None) -> LoadSummary:
    """One sizing summary, or one or more loadtest run summaries."""
    if len(paths) == 1:
        try:
            return read_summary(paths[0])
        except CapacityError as exc:
            if RUN_SCHEMA not in paths[0].read_text(encoding="utf-8", errors="replace")[:400]:
                raise exc from None
    return from_runs(paths, php_fpm_workers)
