"""Storage history: per-school byte counts over time, from Prometheus range
queries (HTTP or a saved answer) or from recorded snapshot files.

A snapshot file is CSV `timestamp,school,bytes` (timestamp ISO 8601 with zone,
or epoch seconds) or JSON: a list of {"timestamp", "school", "bytes"} objects,
or a saved Prometheus query_range answer. `moodleops capacity record` appends
to the CSV form."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from moodleops.capacity.errors import CapacityError
from prometheus_client.parser import text_string_to_metric_families

from moodleops.errors import ExporterError, PrometheusError
from moodleops.faults import filesystem_error, http_error

POOL = "pool"       # the name the pool series goes by, next to school codes
CSV_FIELDS = ("timestamp", "school", "bytes")


@dataclass(frozen=True)
class Sample:
    timestamp: float      # epoch seconds, UTC
    school: str
    bytes: float


@dataclass(frozen=True)
class Series:
    """One school's (or the pool's) history, sorted by time, one value per timestamp."""

    name: str
    times: np.ndarray     # epoch seconds
    values: np.ndarray    # bytes

    @property
    def span_days(self) -> float:
        return float(self.times[-1] - self.times[0]) / 86400 if len(self.times) else 0.0

    @property
    def last_time(self) -> datetime:
        return datetime.fromtimestamp(float(self.times[-1]), UTC)


def group(samples: Iterable[Sample]) -> dict[str, Series]:
    """Samples -> one Series per school; a timestamp seen twice keeps the last value read."""
    by_school: dict[str, dict[float, float]] = defaultdict(dict)
    for s in samples:
        by_school[s.school][s.timestamp] = s.bytes
    out: dict[str, Series] = {}
    for school, points in sorted(by_school.items()):
        ts = np.array(sorted(points), dtype=float)
        out[school] = Series(school, ts, np.array([points[t] for t in ts], dtype=float))
    return out


def pool_of(series: Mapping[str, Series]) -> Series:
    """The pool as the sum of the schools, day by day: each school contributes its
    latest value of that day, carried forward over days it was not measured,
    and nothing before its first measurement (a school that joins later)."""
    schools = [s for name, s in series.items() if name != POOL and len(s.times)]
    if not schools:
        raise CapacityError("history: no school series to add up into the pool")
    days = sorted({int(t // 86400) for s in schools for t in s.times})
    total = np.zeros(len(days))
    for s in schools:
        sday = (s.times // 86400).astype(int)
        idx = np.searchsorted(sday, np.array(days), side="right") - 1
        known = idx >= 0
        total[known] += s.values[idx[known]]
    return Series(POOL, np.array(days, dtype=float) * 86400 + 86399, total)


# -- reading -------------------------------------------------------------------

def parse_timestamp(text: str, where: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise CapacityError(f"{where}: timestamp {text!r} is not valid "
                            "(ISO 8601 like 2025-03-01T00:00:00+00:00, or epoch seconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _bytes(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CapacityError(f"{where}: bytes {value!r} is not valid (a number >= 0)") from None
    if not math.isfinite(number) or number < 0:
        raise CapacityError(f"{where}: bytes {value!r} is not valid (a number >= 0)")
    return number


def samples_from_prometheus(doc: Any, label: str, where: str, name: str | None = None) -> list[Sample]:
    """Samples of a query_range answer ({"status":"success","data":{"resultType":"matrix",...}}).
    Each result's `label` names the school; with `name` every result is that series (the pool)."""
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        detail = doc.get("error") if isinstance(doc, dict) else None
        raise CapacityError(f"{where}: not a successful Prometheus query_range answer"
                            + (f" ({detail})" if detail else ""))
    data = doc["data"]
    if data.get("resultType") != "matrix":
        raise CapacityError(f"{where}: resultType {data.get('resultType')!r} is not valid (matrix)")
    out: list[Sample] = []
    for result in data.get("result") or []:
        school = name or (result.get("metric") or {}).get(label)
        if not school:
            continue  # a series without the school label is not a school's
        for t, v in result.get("values") or []:
            if v in ("NaN", "+Inf", "-Inf"):
                continue
            out.append(Sample(float(t), str(school), _bytes(v, where)))
    return out


def read_snapshots(path: Path, label: str = "school") -> list[Sample]:
    """Samples from a recorded file (CSV or JSON, see the module docstring)."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CapacityError(f"history file {where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CapacityError(f"history file {where} cannot be read ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CapacityError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(doc, dict):
            return samples_from_prometheus(doc, label, where)
        if not isinstance(doc, list):
            raise CapacityError(f"{where}: JSON must be a list of {{timestamp, school, bytes}} "
                                "or a Prometheus query_range answer")
        rows: Iterable[Mapping[str, Any]] = doc
    else:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or not set(CSV_FIELDS) <= set(reader.fieldnames):
            raise CapacityError(f"{where}: CSV header {reader.fieldnames!r} is not valid "
                                f"(must contain {', '.join(CSV_FIELDS)})")
        rows = list(reader)
    out = []
    for i, row in enumerate(rows, start=2 if path.suffix.lower() != ".json" else 0):
        at = f"{where}: {'line' if path.suffix.lower() != '.json' else 'item'} {i}"
        if not isinstance(row, Mapping) or not all(k in row for k in CSV_FIELDS):
            raise CapacityError(f"{at}: must have {', '.join(CSV_FIELDS)}")
        school = str(row["school"]).strip()
        if not school:
            raise CapacityError(f"{at}: empty school")
        out.append(Sample(parse_timestamp(str(row["timestamp"]), at), school, _bytes(row["bytes"], at)))
    return out


def selector(metric: str, match: Mapping[str, str]) -> str:
    if not match:
        return metric
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(match.items())) + "}"


def fetch_prometheus(url: str, metric: str, label: str, start: float, end: float, step: int,
                     match: Mapping[str, str] | None = None, timeout: float = 30,
                     pool: bool = False) -> list[Sample]:
    """Ask Prometheus (GET <url>/api/v1/query_range) for the metric summed per school
    (over instances: one exporter should be scraped) or, with `pool`, summed over
    everything."""
    sel = selector(metric, match or {})
    query = f"max({sel})" if pool else f"sum by ({label}) ({sel})"
    endpoint = url.rstrip("/") + "/api/v1/query_range"
    try:
        resp = requests.get(endpoint, params={"query": query, "start": f"{start:.0f}", "end": f"{end:.0f}",
                                              "step": str(step)}, timeout=timeout)
    except requests.RequestException as exc:
        raise http_error(PrometheusError, url, exc, check="that Prometheus runs there: --prometheus or "
                         "MOODLEOPS_PROMETHEUS_URL") from None
    try:
        doc = resp.json()
    except ValueError:
        raise http_error(PrometheusError, endpoint, status=resp.status_code,
                         check="that the URL is Prometheus' (not a proxy's error page)") from None
    return samples_from_prometheus(doc, label, f"Prometheus {endpoint} ({query})", POOL if pool else None)


def samples_from_exposition(text: str, metric: str, label: str, now: float,
                            match: Mapping[str, str] | None = None, name: str | None = None) -> list[Sample]:
    """Samples of one scrape of an exporter's /metrics text (Prometheus exposition
    format), stamped `now` unless the exposition carries its own timestamps. Only
    samples whose labels include `match`; with `name`, every sample is that series
    (the pool) whatever its labels."""
    match = match or {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError) as exc:
        raise CapacityError(f"/metrics text is not valid Prometheus exposition format ({exc})") from None
    out = []
    for family in families:
        for sample in family.samples:
            if sample.name != metric or any(sample.labels.get(k) != v for k, v in match.items()):
                continue
            school = name or sample.labels.get(label, "")
            if not school or math.isnan(sample.value):
                continue
            out.append(Sample(float(sample.timestamp) if sample.timestamp else now,
                              school, _bytes(sample.value, f"metric {metric}")))
    return out


def scrape(url: str, timeout: float = 30) -> str:
    check = "that the storage exporter runs there (supervisorctl status), or the URL given to --from-metrics"
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise http_error(ExporterError, url, exc, check=check, done="nothing was recorded") from None
    if resp.status_code >= 400:
        raise http_error(ExporterError, url, status=resp.status_code, check=check, done="nothing was recorded")
    return resp.text


# -- writing -------------------------------------------------------------------

def append_snapshots(path: Path, samples: Iterable[Sample]) -> int:
    """Append samples to a CSV history (header written when the file is new)."""
    rows = list(samples)
    new = not path.exists() or path.stat().st_size == 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(CSV_FIELDS)
            for s in rows:
                stamp = datetime.fromtimestamp(s.timestamp, UTC).isoformat(timespec="seconds")
                writer.writerow((stamp, s.school, f"{s.bytes:.0f}"))
    except OSError as exc:
        # A failed write (disk full) carries no file name: name the history file.
        fs = filesystem_error(OSError(exc.errno, exc.strerror, str(exc.filename or path)))
        if fs is None:
            raise
        raise fs from exc
    return len(rows)
