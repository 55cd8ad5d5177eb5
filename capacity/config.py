"""Planning parameters from inventory/capacity.yml, validated like the rest of the inventory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from moodleops.inventory import Inventory, MonthDay
from moodleops.inventory._reader import Node, display_path, load_yaml

FILE_NAME = "capacity.yml"


@dataclass(frozen=True)
class ForecastParams:
    metric: str
    match_labels: dict[str, str]
    school_label: str
    pool_metric: str
    range_step_seconds: int
    lookback_days: int
    min_points: int
    min_span_days: int
    seasonality_min_days: int
    seasonal_harmonics: int
    academic_year_start: MonthDay
    confidence: float
    level_shift_threshold: float


@dataclass(frozen=True)
class WebNode:
    cores: int
    ram_mb: int
    reserved_ram_mb: int
    workers_per_core: int
    php_worker_memory_mb: int


@dataclass(frozen=True)
class DbParams:
    reserved_connections: int
    per_connection_mb: int
    database_bytes: int
    hot_fraction: float
    shared_buffers_ratio: float
    os_reserved_mb: int
    ram_step_mb: int


@dataclass(frozen=True)
class SizingParams:
    population_growth: float
    peak_active_ratio: float
    p95_target_ms: float
    headroom: float
    target_utilisation: float
    web_node: WebNode
    min_web_nodes: int
    db: DbParams


@dataclass(frozen=True)
class ReviewParams:
    obsolete_after_days: int
    recyclebin_older_than_days: int
    largest_courses: int
    inactive_account_days: int


@dataclass(frozen=True)
class BillingParams:
    timezone: str


@dataclass(frozen=True)
class CapacityParams:
    forecast: ForecastParams
    sizing: SizingParams
    review: ReviewParams
    billing: BillingParams


def _number(node: Node, minimum: float = 0.0, maximum: float | None = None) -> float:
    desc = f"a number >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if type(node.value) not in (int, float) or node.value < minimum or (
            maximum is not None and node.value > maximum):
        node.fail(("required: " if node.missing else "") + desc)
    return float(node.value)


_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _labels(node: Node) -> dict[str, str]:
    if node.missing or node.value is None:
        return {}
    out = {}
    for key, value in node.items():
        if not _LABEL.match(key) or not isinstance(value.value, str):
            value.fail("a label name mapped to a text value, e.g. {bucket: school}")
        out[key] = value.value
    return out


def _optional_text(node: Node) -> str:
    if node.missing or node.value in (None, ""):
        return ""
    return node.text()


def _ratio(node: Node) -> float:
    if node.missing:
        node.fail("required: a number strictly between 0 and 1")
    return node.ratio()


def load_params(inv: Inventory, path: Path | None = None) -> CapacityParams:
    """Read capacity.yml beside the inventory's shared files (or `path`)."""
    path = path or inv.root / FILE_NAME
    doc = Node(display_path(path), "", load_yaml(path))
    f = doc.get("forecast")
    forecast = ForecastParams(
        metric=f.get("metric").text(_METRIC, "a Prometheus metric name"),
        match_labels=_labels(f.get("match_labels")),
        school_label=f.get("school_label").text(),
        pool_metric=_optional_text(f.get("pool_metric")),
        range_step_seconds=f.get("range_step_seconds").integer(minimum=1),
        lookback_days=f.get("lookback_days").integer(minimum=1),
        min_points=f.get("min_points").integer(minimum=3),
        min_span_days=f.get("min_span_days").integer(minimum=1),
        seasonality_min_days=f.get("seasonality_min_days").integer(minimum=30),
        seasonal_harmonics=f.get("seasonal_harmonics").integer(minimum=0, maximum=6),
        academic_year_start=f.get("academic_year_start").month_day(),
        confidence=_ratio(f.get("confidence")),
        level_shift_threshold=_number(f.get("level_shift_threshold"), 1.0),
    )
    s = doc.get("sizing")
    w = s.get("web_node")
    d = s.get("db")
    sizing = SizingParams(
        population_growth=_number(s.get("population_growth"), -0.9, 10.0),
        peak_active_ratio=_ratio(s.get("peak_active_ratio")),
        p95_target_ms=_number(s.get("p95_target_ms"), 1.0),
        headroom=_number(s.get("headroom"), 0.0, 10.0),
        target_utilisation=_ratio(s.get("target_utilisation")),
        web_node=WebNode(
            cores=w.get("cores").integer(minimum=1),
            ram_mb=w.get("ram_mb").integer(minimum=256),
            reserved_ram_mb=w.get("reserved_ram_mb").integer(minimum=0),
            workers_per_core=w.get("workers_per_core").integer(minimum=1),
            php_worker_memory_mb=w.get("php_worker_memory_mb").integer(minimum=1),
        ),
        min_web_nodes=s.get("min_web_nodes").integer(minimum=1),
        db=DbParams(
            reserved_connections=d.get("reserved_connections").integer(minimum=0),
            per_connection_mb=d.get("per_connection_mb").integer(minimum=1),
            database_bytes=d.get("database_bytes").integer(minimum=1),
            hot_fraction=_ratio(d.get("hot_fraction")),
            shared_buffers_ratio=_ratio(d.get("shared_buffers_ratio")),
            os_reserved_mb=d.get("os_reserved_mb").integer(minimum=0),
            ram_step_mb=d.get("ram_step_mb").integer(minimum=1),
        ),
    )
    if sizing.web_node.reserved_ram_mb + sizing.web_node.php_worker_memory_mb > sizing.web_node.ram_mb:
        w.get("reserved_ram_mb").fail("reserved_ram_mb + php_worker_memory_mb must fit in ram_mb")
    r = doc.get("review")
    review = ReviewParams(
        obsolete_after_days=r.get("obsolete_after_days").integer(minimum=1),
        recyclebin_older_than_days=r.get("recyclebin_older_than_days").integer(minimum=0),
        largest_courses=r.get("largest_courses").integer(minimum=1),
        inactive_account_days=r.get("inactive_account_days").integer(minimum=1),
    )
    tz_node = doc.get("billing").get("timezone")
    tz = tz_node.text()
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        tz_node.fail("an IANA time zone name, e.g. Europe/Paris")
    return CapacityParams(forecast=forecast, sizing=sizing, review=review, billing=BillingParams(tz))
