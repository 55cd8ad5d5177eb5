"""The yearly capacity review of one school: usage, growth, forecast, largest
courses, obsolete-content candidates and accounts, as one HTML file ready to
send to the school.

Moodle-side figures come from `collect` (read-only queries) into a ReviewData
that can be saved as JSON and rendered again offline; storage figures come
from the school's history (exporter series or recorded snapshots)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import jinja2
from moodleops.capacity.config import ReviewParams
from moodleops.capacity.errors import CapacityError, read_schema_doc
from moodleops.capacity.forecast import Crossing, Projection
from moodleops.capacity.history import Series
from moodleops.capacity.svg import storage_chart

from moodleops import membership, moodledb
from moodleops.inventory import Inventory, School
from moodleops.site import Site

# Review pages are rendered from templates, escaped by default.
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("moodleops.capacity", "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)

SCHEMA = "moodleops.review-data/1"


@dataclass(frozen=True)
class CourseInfo:
    id: int
    shortname: str
    fullname: str
    visible: bool
    timecreated: int
    bytes: int
    last_access: int | None     # latest access by anyone (user_lastaccess), None: never


@dataclass(frozen=True)
class BinItem:
    kind: str                   # course (an activity deleted in a course) | category (a deleted course)
    where: str                  # course shortname or category name
    name: str
    timecreated: int
    bytes: int


@dataclass(frozen=True)
class ReviewData:
    school: str
    taken_at: int
    source: str
    logical_bytes: int          # SUM(filesize) below the school's category, today
    courses: tuple[CourseInfo, ...]
    recyclebin: tuple[BinItem, ...]
    accounts: dict[str, int] = field(default_factory=dict)
    account_types: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=1, ensure_ascii=False)

    @staticmethod
    def read(path: Path) -> ReviewData:
        doc = read_schema_doc(path, SCHEMA, "review data", "capacity review --save-data")
        try:
            return ReviewData(str(doc["school"]), int(doc["taken_at"]), str(doc["source"]),
                              int(doc["logical_bytes"]), tuple(CourseInfo(**c) for c in doc["courses"]),
                              tuple(BinItem(**b) for b in doc["recyclebin"]), dict(doc["accounts"]),
                              dict(doc["account_types"]))
        except (KeyError, TypeError) as exc:
            raise CapacityError(f"{path}: a field is missing or malformed ({exc})") from None


_CATEGORY = "SELECT id, path FROM {course_categories} WHERE idnumber = %(idnumber)s"

_COURSES = """
WITH cats AS (SELECT id FROM {course_categories} WHERE path = %(path)s OR path LIKE %(path)s || '/%%'),
     co AS (SELECT c.id, c.shortname, c.fullname, c.visible, c.timecreated, x.path AS ctxpath
              FROM {course} c JOIN {context} x ON x.contextlevel = 50 AND x.instanceid = c.id
             WHERE c.category IN (SELECT id FROM cats))
SELECT co.id, co.shortname, co.fullname, co.visible, co.timecreated,
       (SELECT COALESCE(SUM(f.filesize), 0) FROM {files} f JOIN {context} fx ON fx.id = f.contextid
         WHERE f.filesize > 0 AND (fx.path = co.ctxpath OR fx.path LIKE co.ctxpath || '/%%')) AS bytes,
       (SELECT MAX(la.timeaccess) FROM {user_lastaccess} la WHERE la.courseid = co.id) AS last_access
  FROM co
"""

_SCHOOL_BYTES = """
SELECT COALESCE(SUM(f.filesize), 0) AS bytes
  FROM {files} f JOIN {context} fx ON fx.id = f.contextid
  JOIN {context} cx ON cx.contextlevel = 40 AND cx.instanceid = %(catid)s
 WHERE f.filesize > 0 AND (fx.path = cx.path OR fx.path LIKE cx.path || '/%%')
"""

_BIN = """
WITH cats AS (SELECT id, name FROM {course_categories} WHERE path = %(path)s OR path LIKE %(path)s || '/%%')
SELECT 'category' AS kind, cats.name AS "where", b.shortname || ' ' || b.fullname AS name, b.timecreated,
       (SELECT COALESCE(SUM(f.filesize), 0) FROM {files} f WHERE f.component = 'tool_recyclebin'
           AND f.filearea = 'recyclebin_coursecat' AND f.itemid = b.id) AS bytes
  FROM {tool_recyclebin_category} b JOIN cats ON cats.id = b.categoryid
UNION ALL
SELECT 'course', c.shortname, b.name, b.timecreated,
       (SELECT COALESCE(SUM(f.filesize), 0) FROM {files} f WHERE f.component = 'tool_recyclebin'
           AND f.filearea = 'recyclebin_course' AND f.itemid = b.id)
  FROM {tool_recyclebin_course} b JOIN {course} c ON c.id = b.courseid
 WHERE c.category IN (SELECT id FROM cats)
"""

_ACCOUNTS = """
SELECT u.suspended, u.auth, u.lastaccess,
       COALESCE((SELECT d.data FROM {user_info_data} d JOIN {user_info_field} f ON f.id = d.fieldid
                  WHERE d.userid = u.id AND f.shortname = %(type_field)s), '') AS account_type
  FROM (SELECT DISTINCT userid FROM ({members}) m0) m JOIN {user} u ON u.id = m.userid
 WHERE u.deleted = 0
"""


def collect(inv: Inventory, site: Site, school: School, params: ReviewParams) -> ReviewData:
    p = inv.platform
    with moodledb.connect(moodledb.target_of(site), application="moodleops-review") as conn:
        now = int(datetime.now(UTC).timestamp())
        cats = moodledb.rows(conn, site.db_prefix, _CATEGORY, {"idnumber": school.category_idnumber})
        if not cats:
            raise CapacityError(f"school {school.code}: no course category with idnumber "
                                f"{school.category_idnumber!r} in Moodle (run `moodleops platform up`)")
        cat = cats[0]
        args = {"path": cat["path"], "catid": cat["id"]}
        logical = int(moodledb.rows(conn, site.db_prefix, _SCHOOL_BYTES, args)[0]["bytes"])
        courses = tuple(CourseInfo(int(r["id"]), r["shortname"], r["fullname"], bool(r["visible"]),
                                   int(r["timecreated"]), int(r["bytes"]),
                                   int(r["last_access"]) if r["last_access"] else None)
                        for r in moodledb.rows(conn, site.db_prefix, _COURSES, args))
        binned = tuple(BinItem(r["kind"], r["where"], r["name"] or "", int(r["timecreated"]), int(r["bytes"]))
                       for r in moodledb.rows(conn, site.db_prefix, _BIN, args))
        sub, sub_params = membership.members_sql(membership.rule_of(p), (school,))
        members = moodledb.rows(conn, site.db_prefix, _ACCOUNTS.replace("{members}", sub),
                                {**sub_params, "type_field": p.accounts.account_type_field})
    inactive_before = now - params.inactive_account_days * 86400
    accounts = {
        "members": len(members),
        "suspended": sum(1 for m in members if m["suspended"] or m["auth"] == "nologin"),
        "never_logged_in": sum(1 for m in members if not m["lastaccess"]),
        "inactive": sum(1 for m in members if m["lastaccess"] and m["lastaccess"] < inactive_before),
    }
    types: dict[str, int] = {}
    for m in members:
        t = str(m["account_type"]).strip().casefold() or "(none)"
        types[t] = types.get(t, 0) + 1
    return ReviewData(school.code, now, f"{site.db_name}@{site.db_host}:{site.db_port}", logical, courses,
                      binned, accounts, dict(sorted(types.items())))


# -- rendering ---------------------------------------------------------------------

def _gb(n: float) -> str:
    # Decimal units, as the agreement counts them; small courses in MB.
    return f"{n / 1e9:,.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:,.1f} MB"


def _day(epoch: int | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat() if epoch else "never"


def _crossing_text(c: Crossing | None, until: date) -> str:
    if c is None:
        return "no forecast"
    if c.already:
        return "already above the threshold"
    if c.expected is None and c.earliest is None:
        return f"not before {until} (end of the agreement)"
    expected = c.expected.isoformat() if c.expected else f"after {until}"
    earliest = c.earliest.isoformat() if c.earliest else f"after {until}"
    latest = c.latest.isoformat() if c.latest else f"after {until}"
    return f"{expected} (between {earliest} and {latest})"


@dataclass(frozen=True)
class StorageView:
    """What the history says: current usage, growth over the last year, the forecast."""

    history: Series | None
    projection: Projection | None
    crossing: Crossing | None
    problem: str = ""           # why there is no forecast (short history...)


def render_html(inv: Inventory, school: School, data: ReviewData, storage: StorageView,
                params: ReviewParams) -> str:
    p = inv.platform
    taken = datetime.fromtimestamp(data.taken_at, UTC)
    obsolete_before = data.taken_at - params.obsolete_after_days * 86400
    bin_before = data.taken_at - params.recyclebin_older_than_days * 86400
    until = p.agreement_end

    h = storage.history
    current = float(h.values[-1]) if h is not None and len(h.values) else float(data.logical_bytes)
    growth_line = "not enough history"
    if h is not None and len(h.values) >= 2:
        year_ago = h.times[-1] - 365 * 86400
        i = int((abs(h.times - year_ago)).argmin())
        days = (h.times[-1] - h.times[i]) / 86400
        if days > 0:
            growth_line = (f"{_gb(h.values[-1] - h.values[i])} over the last {days:.0f} days "
                           f"({_gb((h.values[-1] - h.values[i]) * 365.25 / days)} per year)")
    fit = storage.projection.fit if storage.projection is not None else None
    trend = f"{_gb(fit.slope_per_year)} per year" if fit is not None else "-"

    courses = sorted(data.courses, key=lambda c: -c.bytes)[:params.largest_courses]
    obsolete = sorted((c for c in data.courses
                       if (c.last_access or 0) < obsolete_before and c.timecreated < obsolete_before),
                      key=lambda c: -c.bytes)
    old_bin = sorted((b for b in data.recyclebin if b.timecreated < bin_before), key=lambda b: b.timecreated)

    chart = (storage_chart(h, storage.projection, school.alert_bytes, f"storage of {school.name}")
             if h is not None and len(h.values) else "")
    forecast_note = storage.problem or (
        f"Trend model with a {fit.confidence:.0%} prediction band"
        + (f", academic-year seasonality ({fit.harmonics} harmonics)" if fit and fit.harmonics else "")
        + (f", {len(fit.steps)} level shift(s) (bulk import or deletion) detected" if fit and fit.steps else "")
        + "." if fit else "")

    acc = data.accounts
    acc_rows = [("accounts in the school", str(acc.get("members", 0))),
                ("suspended", str(acc.get("suspended", 0))),
                ("never logged in", str(acc.get("never_logged_in", 0))),
                (f"not logged in for {params.inactive_account_days} days", str(acc.get("inactive", 0)))]
    acc_rows += [(f"account type: {t}", str(n)) for t, n in data.account_types.items()]

    return _TEMPLATES.get_template("review.html.j2").render(
        school=school, day=taken.date().isoformat(), source=data.source, agreement_start=p.agreement_start,
        agreement_end=p.agreement_end, forecast_note=forecast_note, chart=chart,
        usage=[("content stored now", _gb(current)),
               ("alert threshold", _gb(school.alert_bytes)),
               ("share of the threshold", f"{current / school.alert_bytes:.0%}"),
               ("files below the school's category (logical, today)", _gb(data.logical_bytes)),
               ("share of the platform pool", f"{current / p.pool_bytes:.1%} of {_gb(p.pool_bytes)}")],
        growth=[("growth", growth_line), ("trend", trend),
                ("alert threshold reached", _crossing_text(storage.crossing, until))],
        largest=params.largest_courses,
        courses=[(c.shortname, c.fullname, _gb(c.bytes), _day(c.last_access)) for c in courses],
        obsolete_days=params.obsolete_after_days,
        obsolete=[(c.shortname, c.fullname, _gb(c.bytes), _day(c.last_access), _day(c.timecreated))
                  for c in obsolete],
        bin_days=params.recyclebin_older_than_days,
        old_bin=[(b.kind, b.where, b.name, _day(b.timecreated), _gb(b.bytes)) for b in old_bin],
        accounts=acc_rows)


def report_name(school: School, taken_at: int) -> str:
    return f"review-{school.code}-{datetime.fromtimestamp(taken_at, UTC).date().isoformat()}.html"
