"""The run summary (what capacity planning reads) and the SLO verdict.

Schema "moodleops-loadtest-summary/1" (summary.json in the results directory):

    {
      "schema": "moodleops-loadtest-summary/1",
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
      "slo": {"error_rate_max", "p95_ms": {"<page type>": limit, ...}},
      "verdict": {"pass": bool, "violations": [{"page", "metric", "value", "limit"}]},
      "reports": {"csv_prefix", "html"}
    }

Times in milliseconds, rates per second, error rates 0..1. Percentiles are
Locust's (bucketed: 147 -> 150, 3432 -> 3400 ms).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moodleops.loadtests.model import Slo

SCHEMA = "moodleops-loadtest-summary/1"


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

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page, "metric": self.metric, "value": self.value, "limit": self.limit}

    def __str__(self) -> str:
        unit = " ms" if self.metric == "p95" else ""
        return f"{self.page}: {self.metric} {self.value:g}{unit} > {self.limit:g}{unit}"


def verdict(pages: dict[str, PageStats], total: PageStats, slo: Slo) -> list[Violation]:
    """Every SLO breach; an empty list means the run holds its service levels.
    A run that sent no request at all cannot show anything holds: it fails."""
    out: list[Violation] = []
    if total.requests == 0:
        return [Violation("all", "requests", 0, 1)]
    if total.error_rate > slo.error_rate_max:
        out.append(Violation("all", "error_rate", round(total.error_rate, 6), slo.error_rate_max))
    for name in sorted(pages):
        st = pages[name]
        if st.requests >= slo.min_requests_for_p95 and st.p95_ms > slo.p95_limit(name):
            out.append(Violation(name, "p95", st.p95_ms, slo.p95_limit(name)))
    return out


def build_summary(*, pages: dict[str, PageStats], total: PageStats, slo: Slo, violations: list[Violation],
                  run: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        **run,
        "totals": {k: v for k, v in total.to_json().items() if k not in ("avg_ms", "max_ms")},
        "pages": {name: st.to_json() for name, st in sorted(pages.items())},
        "slo": {"error_rate_max": slo.error_rate_max,
                "p95_ms": {name: slo.p95_limit(name) for name in sorted(pages)} | {"default": slo.p95_ms["default"]}},
        "verdict": {"pass": not violations, "violations": [v.to_json() for v in violations]},
    }
