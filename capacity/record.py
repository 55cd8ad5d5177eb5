"""Measure each school's storage now, for a recorded history when no
Prometheus keeps one: from the storage exporter's /metrics (URL or saved
text), or straight from Moodle's database (logical bytes: SUM(filesize) of the
files below the school's category, an upper bound of its deduplicated size)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from moodleops.capacity.config import ForecastParams
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.history import POOL, Sample, samples_from_exposition, scrape, selector

from moodleops import moodledb
from moodleops.inventory import Inventory
from moodleops.site import Site

_LOGICAL = """
SELECT cat.idnumber, COALESCE(SUM(f.filesize), 0) AS bytes
  FROM {course_categories} cat
  JOIN {context} cx ON cx.contextlevel = 40 AND cx.instanceid = cat.id
  LEFT JOIN {context} fx ON fx.path = cx.path OR fx.path LIKE cx.path || '/%%'
  LEFT JOIN {files} f ON f.contextid = fx.id AND f.filesize > 0
 WHERE cat.idnumber = ANY(%(idnumbers)s)
 GROUP BY cat.idnumber
"""


def from_metrics(source: str, params: ForecastParams, now: float | None = None) -> list[Sample]:
    """One scrape: `source` is an http(s) URL or a file holding /metrics text. The
    pool series (forecast.pool_metric), when present, is recorded as school 'pool'."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    if source.startswith(("http://", "https://")):
        text = scrape(source)
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise CapacityError(f"metrics file {source} cannot be read ({exc.strerror or exc})") from None
    samples = samples_from_exposition(text, params.metric, params.school_label, now, params.match_labels)
    if not samples:
        raise CapacityError(f"{source}: no sample of {selector(params.metric, params.match_labels)} with a "
                            f"{params.school_label!r} label (capacity.yml forecast.metric, "
                            "forecast.match_labels, forecast.school_label; or --metric)")
    if params.pool_metric:
        samples += samples_from_exposition(text, params.pool_metric, "", now, name=POOL)
    return samples


def from_database(inv: Inventory, site: Site) -> list[Sample]:
    by_idnumber = {s.category_idnumber: s.code for s in inv.schools}
    with moodledb.connect(moodledb.target_of(site), application="moodleops-capacity") as conn:
        now = datetime.now(UTC).timestamp()
        found = moodledb.rows(conn, site.db_prefix, _LOGICAL, {"idnumbers": list(by_idnumber)})
    return [Sample(now, by_idnumber[r["idnumber"]], float(r["bytes"])) for r in found]
