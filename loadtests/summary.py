"""The run summary (what capacity planning reads) and the SLO verdict.

Schema "moodleops-loadtest-summary/2" (summary.json in the results directory):

    {
      "schema": "moodleops-loadtest-summary/2",
      "generated_at": ISO-8601 UTC, "inventory": env name, "target": base URL,
      "shape": weekday|september|exam|deadline|smoke,
      "users": peak simulated users (= concurrent sessions), "duration_s": wall seconds,
      "compression": calendar compression factor, "think_scale": think-time factor,
      "workers": Locust worker processes (0 = one local process),
      "population": {"students", "trainers", "scale"},
      "model": {"peak_concurrent", "peak_arrivals_per_s", "peak_pages_per_s", ...}  (for the full population),
      "totals": {"requests", "failures", "error_rate", "rps", "p50_ms", "p95_ms", "p99_ms"},
      "pages": {"<page type>": {"requests", "failures", "error_rate", "rps",
                                "p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms"}},
      "steady": {"from_s", "totals", "pages"}      (after warm-up, from requests.csv),
      "peak_window": {"from_s", "to_s", "totals", "pages"}  (the busiest window after warm-up),
      "mix": {"expected", "observed", "worst_page", "gap", "tolerance", "within"},
      "server": {"interval_s", "samples": [...], "saturation": {...}, "first_saturated"} (runner.ServerSampler),
      "slo": {"error_rate_max", "p95_ms": {"<page type>": limit, ...}},
      "verdict": {"status": "PASS"|"FAIL"|"INCONCLUSIVE", "pass": bool,
                  "violations": [{"page", "metric", "value", "limit", "scope"}],
                  "missing": [{"page", "requests", "minimum"}]},
      "locust_exit_code": int, "reports": {"csv_prefix", "html", "requests_csv"}
    }

The p95 judged per page type is the peak window's (the whole steady part's
when the window holds fewer than slo.min_requests_for_p95 of that page); the
error rate is the whole run's (errors in the warm-up are errors). INCONCLUSIVE:
no SLO was broken by what ran, but a page type the shape plays ran fewer
than run.min_requests_per_page times after warm-up — a pass would be a pass
by omission.

Times in milliseconds, rates per second, error rates 0..1. Percentiles are
Locust's (bucketed: 147 -> 150, 3432 -> 3400 ms).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moodleops.loadtests.model import Slo

SCHEMA = "moodleops-loadtest-summary/2"
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass(frozen=True)
class PageStats:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "failures": self.failures, "error_rate": round(self.error_rate, 6),
                "rps": round(self.rps, 4), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms,
                "avg_ms": round(self.avg_ms, 1), "max_ms": round(self.max_ms, 1)}


def _f(row: dict[str, str], key: str) -> float:
    value = row.get(key, "") or "0"
    return 0.0 if value == "N/A" else float(value)


def read_stats(stats_csv: Path) -> tuple[dict[str, PageStats], PageStats]:
    """Per page type and aggregated figures from Locust's <prefix>_stats.csv."""
    pages: dict[str, PageStats] = {}
    total = PageStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    with open(stats_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stats = PageStats(int(_f(row, "Request Count")), int(_f(row, "Failure Count")), _f(row, "Requests/s"),
                              _f(row, "50%"), _f(row, "95%"), _f(row, "99%"), _f(row, "Average Response Time"),
                              _f(row, "Max Response Time"))
            if row["Name"] == "Aggregated":
                total = stats
            else:
                # The same page type can appear under GET and POST; the SLO is per page type.
                prev = pages.get(row["Name"])
                pages[row["Name"]] = stats if prev is None else _merge(prev, stats)
    return pages, total


def _merge(a: PageStats, b: PageStats) -> PageStats:
    n = a.requests + b.requests
    return PageStats(n, a.failures + b.failures, a.rps + b.rps, max(a.p50_ms, b.p50_ms),
                     max(a.p95_ms, b.p95_ms), max(a.p99_ms, b.p99_ms),
                     (a.avg_ms * a.requests + b.avg_ms * b.requests) / n if n else 0.0, max(a.max_ms, b.max_ms))


@dataclass(frozen=True)
class Violation:
    page: str
    metric: str
    value: float
    limit: float
    scope: str = "run"

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page, "metric": self.metric, "value": self.value, "limit": self.limit,
                "scope": self.scope}

    def __str__(self) -> str:
        unit = " ms" if self.metric == "p95" else ""
        return f"{self.page}: {self.metric} {self.value:g}{unit} > {self.limit:g}{unit}"


def verdict(pages: dict[str, PageStats], total: PageStats, slo: Slo,
            peak: dict[str, PageStats] | None = None) -> list[Violation]:
    """Every SLO breach; an empty list means the run holds its service levels.
    A run that sent no request at all cannot show anything holds: it fails.
    `pages`: the steady part; `peak`: the peak window, whose p95 is judged
    where it holds enough requests of the page."""
    out: list[Violation] = []
    if total.requests == 0:
        return [Violation("all", "requests", 0, 1)]
    if total.error_rate > slo.error_rate_max:
        out.append(Violation("all", "error_rate", round(total.error_rate, 6), slo.error_rate_max))
    for name in sorted(pages):
        st, scope = pages[name], "steady"
        if peak is not None and name in peak and peak[name].requests >= slo.min_requests_for_p95:
            st, scope = peak[name], "peak_window"
        if st.requests >= slo.min_requests_for_p95 and st.p95_ms > slo.p95_limit(name):
            out.append(Violation(name, "p95", st.p95_ms, slo.p95_limit(name), scope if peak is not None else "run"))
    return out


@dataclass(frozen=True)
class Missing:
    page: str
    requests: int
    minimum: int

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page, "requests": self.requests, "minimum": self.minimum}

    def __str__(self) -> str:
        return f"{self.page}: ran {self.requests} time(s) after warm-up, at least {self.minimum} needed"


def missing_pages(expected: dict[str, float], steady: dict[str, PageStats], minimum: int) -> list[Missing]:
    """Page types the shape plays that did not run often enough to be judged."""
    return [Missing(p, steady[p].requests if p in steady else 0, minimum)
            for p in sorted(expected) if expected[p] > 0 and (steady[p].requests if p in steady else 0) < minimum]


def status(violations: list[Violation], missing: list[Missing]) -> str:
    # A breach of what ran is a failure whatever is missing; silence is not a pass.
    if violations:
        return FAIL
    return INCONCLUSIVE if missing else PASS


# -- per-request records (requests.csv) ---------------------------------------------

@dataclass(frozen=True)
class Sample:
    t: float          # wall start, epoch seconds
    name: str
    ms: float
    ok: bool
    node: str = ""    # the web node that answered (the load balancer's header), "" if none said


def read_requests(path: Path) -> tuple[float | None, list[Sample]]:
    """The test start (epoch) and every request recorded by the locustfile."""
    start: float | None = None
    out: list[Sample] = []
    if not path.is_file():
        return None, out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("# start "):
                start = start or float(line.split()[2])
                continue
            parts = line.rstrip("\n").split(",")
            if len(parts) in (4, 5):
                out.append(Sample(float(parts[0]), parts[1], float(parts[2]), parts[3] == "1",
                                  parts[4] if len(parts) == 5 else ""))
    out.sort(key=lambda s: s.t)
    return start, out


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))]


def stats_of(samples: list[Sample], seconds: float) -> tuple[dict[str, PageStats], PageStats]:
    """Per page type and overall figures of `samples` spread over `seconds`."""
    by: dict[str, list[Sample]] = {}
    for smp in samples:
        by.setdefault(smp.name, []).append(smp)

    def one(group: list[Sample]) -> PageStats:
        ms = sorted(s.ms for s in group)
        return PageStats(len(ms), sum(1 for s in group if not s.ok), len(ms) / seconds if seconds > 0 else 0.0,
                         _pct(ms, 0.50), _pct(ms, 0.95), _pct(ms, 0.99), sum(ms) / len(ms) if ms else 0.0,
                         ms[-1] if ms else 0.0)

    return {n: one(g) for n, g in sorted(by.items())}, one(samples)


def node_stats(samples: list[Sample], seconds: float) -> dict[str, PageStats]:
    """Overall figures per web node that answered (named by the load balancer)."""
    by: dict[str, list[Sample]] = {}
    for smp in samples:
        if smp.node:
            by.setdefault(smp.node, []).append(smp)
    return {n: stats_of(g, seconds)[1] for n, g in sorted(by.items())}


@dataclass(frozen=True)
class Windows:
    warmup_s: float
    steady_pages: dict[str, PageStats]
    steady_total: PageStats
    peak_from_s: float
    peak_to_s: float
    peak_pages: dict[str, PageStats]
    peak_total: PageStats
    steady_nodes: dict[str, PageStats]
    peak_nodes: dict[str, PageStats]


def windows(start: float, samples: list[Sample], duration_s: float, warmup_s: float, window_s: float,
            *, cut_at_end: bool = True) -> Windows:
    """Steady part (after warm-up) and the busiest window of `window_s` in it (1 s steps).
    `cut_at_end`: leave out what came after the planned end (users of a recurring
    shape stopping); one-shot shapes keep it (the last takers finishing)."""
    last = max([duration_s] + [s.t - start for s in samples])
    end = duration_s if cut_at_end else last
    steady = [s for s in samples if warmup_s <= s.t - start and (s.t - start < end or not cut_at_end)]
    steady_pages, steady_total = stats_of(steady, max(1e-9, end - warmup_s))
    window_s = max(1.0, min(window_s, end - warmup_s))
    bins: dict[int, int] = {}
    for s in steady:
        bins[int(s.t - start)] = bins.get(int(s.t - start), 0) + 1
    best_from, best = warmup_s, -1
    for a in range(int(warmup_s), max(int(warmup_s) + 1, int(end - window_s) + 1)):
        n = sum(bins.get(b, 0) for b in range(a, a + round(window_s)))
        if n > best:
            best_from, best = float(a), n
    peak = [s for s in steady if best_from <= s.t - start < best_from + window_s]
    peak_pages, peak_total = stats_of(peak, window_s)
    return Windows(warmup_s, steady_pages, steady_total, best_from, best_from + window_s, peak_pages, peak_total,
                   node_stats(steady, max(1e-9, end - warmup_s)), node_stats(peak, window_s))


def _totals(st: PageStats) -> dict[str, Any]:
    return {k: v for k, v in st.to_json().items() if k not in ("avg_ms", "max_ms")}


def build_summary(*, pages: dict[str, PageStats], total: PageStats, slo: Slo, violations: list[Violation],
                  run: dict[str, Any], missing: list[Missing] | None = None,
                  win: Windows | None = None) -> dict[str, Any]:
    missing = missing or []
    out: dict[str, Any] = {
        "schema": SCHEMA,
        **run,
        "totals": _totals(total),
        "pages": {name: st.to_json() for name, st in sorted(pages.items())},
    }
    if win is not None:
        out["steady"] = {"from_s": round(win.warmup_s, 1), "totals": _totals(win.steady_total),
                         "pages": {n: st.to_json() for n, st in win.steady_pages.items()},
                         "nodes": {n: _totals(st) for n, st in win.steady_nodes.items()}}
        out["peak_window"] = {"from_s": round(win.peak_from_s, 1), "to_s": round(win.peak_to_s, 1),
                              "totals": _totals(win.peak_total),
                              "pages": {n: st.to_json() for n, st in win.peak_pages.items()},
                              "nodes": {n: _totals(st) for n, st in win.peak_nodes.items()}}
    out["slo"] = {"error_rate_max": slo.error_rate_max,
                  "p95_ms": {name: slo.p95_limit(name) for name in sorted(pages)} | {"default": slo.p95_ms["default"]}}
    st = status(violations, missing)
    out["verdict"] = {"status": st, "pass": st == PASS, "violations": [v.to_json() for v in violations],
                      "missing": [m.to_json() for m in missing]}
    return out
