"""`moodleops capacity`: storage forecast, sizing, yearly school review, billing count."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from moodleops.capacity import billing, record, review, sizing
from moodleops.capacity.config import CapacityParams, ForecastParams, load_params
from moodleops.capacity.errors import CapacityError
from moodleops.capacity.forecast import Crossing, crossing, fit, horizon_check, project
from moodleops.capacity.history import (
    POOL,
    Sample,
    Series,
    append_snapshots,
    fetch_prometheus,
    group,
    read_snapshots,
)
from moodleops.capacity.planning import Outcome, Plan, parse_join, plan

from moodleops.commands import add_area, add_command
from moodleops.inventory import Inventory, load_inventory
from moodleops.site import site_of

PROMETHEUS_ENV = "MOODLEOPS_PROMETHEUS_URL"

EXIT = """\
exit status:
  0  done
  1  done, with problems to look at (see the output)
  2  bad input: one line on stderr naming the value and what is allowed
"""


def _guard(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input and unreachable sources end the command with one line, nothing half-written."""
    # CapacityError and SiteError are bad input (2); a database, Prometheus or Moodle
    # fault is a dependency's (4): the top-level command prints the line (moodleops.errors).
    return run


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _context(args: argparse.Namespace) -> tuple[Inventory, CapacityParams]:
    inv = load_inventory(args.inventory)
    return inv, load_params(inv, getattr(args, "params", None))


def _add_history_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("history (one of)")
    src.add_argument("--history", metavar="FILE", type=Path, action="append",
                     help="recorded snapshots: CSV timestamp,school,bytes, JSON list, or a saved "
                          "Prometheus query_range answer (repeatable)")
    src.add_argument("--prometheus", metavar="URL", default=os.environ.get(PROMETHEUS_ENV),
                     help=f"Prometheus base URL, queried with GET /api/v1/query_range (default: ${PROMETHEUS_ENV})")
    p.add_argument("--metric", help="per-school metric name (default: capacity.yml forecast.metric)")
    p.add_argument("--params", metavar="FILE", type=Path,
                   help="planning parameters (default: inventory/capacity.yml)")


def _history(args: argparse.Namespace, params: ForecastParams) -> tuple[dict[str, Series], str]:
    if args.metric:
        params = dataclasses.replace(params, metric=args.metric)
    if args.history and args.prometheus and not os.environ.get(PROMETHEUS_ENV) == args.prometheus:
        raise CapacityError("--history and --prometheus are two sources of the same history: give one")
    if args.history:
        samples: list[Sample] = []
        for path in args.history:
            samples += read_snapshots(path, params.school_label)
        where = ", ".join(str(p) for p in args.history)
    elif args.prometheus:
        end = datetime.now(UTC).timestamp()
        start = end - params.lookback_days * 86400
        samples = fetch_prometheus(args.prometheus, params.metric, params.school_label, start, end,
                                   params.range_step_seconds, params.match_labels)
        if params.pool_metric:
            samples += fetch_prometheus(args.prometheus, params.pool_metric, params.school_label, start, end,
                                        params.range_step_seconds, pool=True)
        where = f"Prometheus {args.prometheus}"
    else:
        raise CapacityError("no history given: use --history FILE (recorded snapshots) or --prometheus URL "
                            f"(or set {PROMETHEUS_ENV})")
    if not samples:
        what = "no samples" if args.history else f"no sample of {params.metric}"
        raise CapacityError(f"history from {where} is empty: {what}")
    return group(samples), where


# -- record ------------------------------------------------------------------------

@_guard
def cmd_record(args: argparse.Namespace) -> int:
    inv, params = _context(args)
    fp = params.forecast if not args.metric else dataclasses.replace(params.forecast, metric=args.metric)
    if args.from_metrics:
        samples = record.from_metrics(args.from_metrics, fp)
    else:
        samples = record.from_database(inv, site_of(inv))
    known = {s.code for s in inv.schools} | {POOL}
    unknown = sorted({s.school for s in samples} - known)
    n = append_snapshots(args.out, samples)
    print(f"recorded {n} sample(s) into {args.out}")
    for code in unknown:
        print(f"note: series for {code!r}, not a school of the inventory (kept in the file, ignored by forecasts)")
    return 0


# -- forecast ----------------------------------------------------------------------

def _fmt_day(d: date | None, until: date) -> str:
    return d.isoformat() if d else f">{until.isoformat()}"


def _crossing_cell(c: Crossing, until: date) -> str:
    if c.already:
        return "already reached"
    if c.expected is None and c.earliest is None:
        return f"not before {until}"
    return f"{_fmt_day(c.expected, until)} ({_fmt_day(c.earliest, until)} .. {_fmt_day(c.latest, until)})"


def _outcome_json(o: Outcome, at: date | None) -> dict[str, Any]:
    def cj(c: Crossing) -> dict[str, Any]:
        return {"threshold_bytes": c.threshold, "already": c.already,
                "expected": c.expected.isoformat() if c.expected else None,
                "earliest": c.earliest.isoformat() if c.earliest else None,
                "latest": c.latest.isoformat() if c.latest else None}
    f = o.projection.fit
    out: dict[str, Any] = {"name": o.name, "scenario": o.scenario, "notes": list(o.projection.notes),
                           "last_bytes": o.last_value, "crossing": cj(o.crossing),
                           "trend_bytes_per_year": f.slope_per_year if f else None,
                           "seasonal": bool(f and f.harmonics), "level_shifts": len(f.steps) if f else 0,
                           "extra_crossings": {k: cj(v) for k, v in o.extra.items()}}
    if at is not None:
        mean, low, high = o.projection.at(at)
        out["at"] = {"date": at.isoformat(), "bytes": mean, "low": low, "high": high}
    return out


def _table(pl: Plan, at: date | None, confidence: float) -> list[str]:
    until = pl.until
    rows = [("school", "now GB", "trend GB/y", "alert GB",
             f"threshold reached: expected ({confidence:.0%} band)", *((f"GB on {at}",) if at else ()))]

    def row(o: Outcome) -> tuple[str, ...]:
        f = o.projection.fit
        name = o.name + (" *" if o.scenario else "")
        cells = [name, f"{(o.last_value or 0) / 1e9:.1f}", f"{f.slope_per_year / 1e9:.1f}" if f else "-",
                 f"{o.threshold / 1e9:g}", _crossing_cell(o.crossing, until)]
        if at:
            mean, low, high = o.projection.at(at)
            cells.append(f"{mean / 1e9:.1f} ({low / 1e9:.1f}..{high / 1e9:.1f})")
        return tuple(cells)

    rows += [row(o) for o in pl.schools]
    pools = [o for o in (pl.pool, pl.pool_scenario) if o is not None]
    rows += [row(o) for o in pools]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in pools:
        for label, c in o.extra.items():
            lines.append(f"{o.name}{' *' if o.scenario else ''} {label}: {_crossing_cell(c, until)}")
    return lines


@_guard
def cmd_forecast(args: argparse.Namespace) -> int:
    inv, params = _context(args)
    p = inv.platform
    until = horizon_check(args.until or p.agreement_end, p.agreement_start, p.agreement_end, "--until")
    at = horizon_check(args.at, p.agreement_start, p.agreement_end, "--at") if args.at else None
    if at is not None and at > until:
        raise CapacityError(f"--at {at} is after the forecast end {until}")
    series, where = _history(args, params.forecast)
    joins = [parse_join(j) for j in args.join or []]
    growth = {code: 2.0 for code in args.double_growth or []}
    pl = plan(inv, params.forecast, series, until, args.school or None, joins, growth)
    if at is not None and pl.schools and at < pl.schools[0].projection.days[0]:
        raise CapacityError(f"--at {at} is not after the last sample ({pl.schools[0].projection.days[0]} "
                            "is the first forecast day)")
    outcomes = pl.schools + [o for o in (pl.pool, pl.pool_scenario) if o is not None]
    if args.format == "json":
        print(json.dumps({"history": where, "until": until.isoformat(), "confidence": params.forecast.confidence,
                          "pool_is_sum_of_schools": pl.pool_is_sum,
                          "forecasts": [_outcome_json(o, at) for o in outcomes],
                          "skipped": pl.skipped, "ignored_series": pl.ignored}, indent=2))
    else:
        print(f"Storage forecast to {until} from {where}")
        print("\n".join(_table(pl, at, params.forecast.confidence)))
        if pl.pool_is_sum:
            print("pool: sum of the schools' series (no pool series in the history)")
        notes = sorted({n for o in outcomes if o.scenario for n in o.projection.notes})
        if notes:
            print("* scenario: " + "; ".join(notes))
        for code, why in pl.skipped.items():
            print(f"no forecast for {code}: {why}")
        for code in pl.ignored:
            print(f"note: series {code!r} is not a school of the inventory (ignored)")
    return 1 if any(o.crossing.already or o.crossing.earliest for o in outcomes) else 0


# -- sizing ------------------------------------------------------------------------

@_guard
def cmd_sizing(args: argparse.Namespace) -> int:
    inv, params = _context(args)
    workers = args.php_fpm_workers or inv.settings.php_fpm_max_children
    load = sizing.read_any(args.loadtest, workers)
    s = sizing.size(inv, load, params.sizing)
    if args.format == "json":
        print(json.dumps(s.as_dict(), indent=2))
    else:
        print(sizing.to_text(s, load, params.sizing), end="")
    return 0


# -- review ------------------------------------------------------------------------

@_guard
def cmd_review(args: argparse.Namespace) -> int:
    inv, params = _context(args)
    codes = args.school or [s.code for s in inv.schools]
    schools = [inv.school(c) for c in codes]
    if args.data and len(schools) != 1:
        raise CapacityError("--data holds one school's data: give exactly one --school with it")
    series: dict[str, Series] = {}
    if args.history or args.prometheus:
        series, _ = _history(args, params.forecast)
    site = None if args.data else site_of(inv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, school in enumerate(schools, 1):
        print(f"[{i}/{len(schools)}] {school.code}", file=sys.stderr)
        if args.data:
            data = review.ReviewData.read(args.data)
            if data.school != school.code:
                raise CapacityError(f"{args.data} holds the data of {data.school!r}, not {school.code!r}")
        else:
            assert site is not None
            data = review.collect(inv, site, school, params.review)
            if args.save_data:
                args.save_data.mkdir(parents=True, exist_ok=True)
                (args.save_data / f"review-data-{school.code}.json").write_text(data.to_json(), encoding="utf-8")
        storage = _storage_view(series.get(school.code), school.alert_bytes, params.forecast, inv)
        html = review.render_html(inv, school, data, storage, params.review)
        path = args.out / review.report_name(school, data.taken_at)
        path.write_text(html, encoding="utf-8")
        written.append(path)
    for path in written:
        print(path)
    return 0


def _storage_view(s: Series | None, threshold: int, params: ForecastParams, inv: Inventory) -> review.StorageView:
    if s is None:
        return review.StorageView(None, None, None, "No storage history recorded for this school.")
    try:
        f = fit(s, params)
    except CapacityError as exc:
        return review.StorageView(s, None, None, f"No forecast: {exc}.")
    proj = project(f, max(inv.platform.agreement_end, f.series.last_time.date() + timedelta(days=1)))
    return review.StorageView(s, proj, crossing(proj, threshold, float(s.values[-1])))


# -- billing -----------------------------------------------------------------------

@_guard
def cmd_billing(args: argparse.Namespace) -> int:
    inv, params = _context(args)
    tz = params.billing.timezone
    billing.campaign_cutoff(inv, args.year, tz)       # a year outside the agreement fails before any query
    snap = billing.Snapshot.read(args.snapshot) if args.snapshot else billing.collect(inv, site_of(inv))
    if args.save_snapshot:
        args.save_snapshot.parent.mkdir(parents=True, exist_ok=True)
        args.save_snapshot.write_text(snap.to_json(), encoding="utf-8")
    result = billing.count(inv, snap, args.year, tz)
    provisional = result.snapshot_taken < result.cutoff
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"billing-{args.year}.csv").write_text(billing.to_csv(result), encoding="utf-8")
        (args.out / f"billing-{args.year}-shared.csv").write_text(billing.shared_csv(result), encoding="utf-8")
        (args.out / f"billing-{args.year}.txt").write_text(billing.to_text(result), encoding="utf-8")
    if args.format == "json":
        print(json.dumps({**billing.to_json(result), "provisional": provisional}, indent=2, ensure_ascii=False))
    elif args.format == "csv":
        print(billing.to_csv(result), end="")
    else:
        print(billing.to_text(result), end="")
        if provisional:
            print(f"PROVISIONAL: data read before the campaign end ({result.cutoff.date()}); "
                  "count again after it for the Région")
        if args.out:
            print(f"written: {args.out}/billing-{args.year}.csv, billing-{args.year}-shared.csv, "
                  f"billing-{args.year}.txt")
    problems = result.shared or any(s.no_type for s in result.schools)
    return 1 if problems else 0


# -- registration ------------------------------------------------------------------

def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "capacity",
        summary="storage forecast, sizing, yearly school review, 15 July billing count",
        description="""\
Capacity planning for the platform, from the storage exporter's history
(Prometheus) or from recorded snapshots, the load model's results and
Moodle's own data (read-only, as the database role moodleops_ro). Every
planning assumption is in inventory/capacity.yml; the agreement facts (pool,
thresholds, rate, dates) in inventory/platform.yml and schools.yml.
docs/capacity.md describes the models and the billing counting rule.""",
        epilog="""\
examples:
  moodleops capacity record --out /var/lib/moodleops/storage-history.csv
  moodleops capacity forecast --history /var/lib/moodleops/storage-history.csv
  moodleops capacity forecast --prometheus http://127.0.0.1:9090 --double-growth ifms_albi
  moodleops capacity sizing --loadtest results/summary.json
  moodleops capacity review --school ifsi_millau --history storage-history.csv --out reviews/
  moodleops capacity billing --year 2025 --out billing/

""" + EXIT)

    rec = add_command(
        commands, "record", summary="append one measurement per school to a snapshot file",
        description="""\
Measure every school's storage now and append it to a CSV history
(timestamp,school,bytes), for forecasts where no Prometheus keeps the
history. Run it daily (cron or a systemd timer).

--from-metrics scrapes the storage exporter (a URL, or a file holding a saved
/metrics text) and keeps the per-school metric (capacity.yml forecast.metric
and match_labels) and the pool metric (forecast.pool_metric, recorded as
"pool"). Without it, the logical bytes of each school's category are read
from Moodle's database (SUM of file sizes, an upper bound of the
deduplicated size).""",
        epilog="""\
examples:
  moodleops capacity record --from-metrics http://127.0.0.1:9465/metrics --out history.csv
  moodleops capacity record --out history.csv      # from the database

""" + EXIT)
    rec.add_argument("--out", metavar="FILE", type=Path, required=True, help="CSV history to append to")
    rec.add_argument("--from-metrics", metavar="URL|FILE", help="exporter /metrics URL or saved text")
    rec.add_argument("--metric", help="per-school metric name (default: capacity.yml forecast.metric)")
    rec.add_argument("--params", metavar="FILE", type=Path, help="planning parameters (default: inventory/capacity.yml)")
    rec.set_defaults(run=cmd_record)

    fc = add_command(
        commands, "forecast", summary="when each school reaches its alert threshold, when the pool fills",
        description="""\
Fit a trend to each school's storage history and to the pool's, and say when
each school reaches its alert threshold (schools.yml alert_bytes, default
storage.default_school_alert_bytes) and when the pool reaches its warning,
critical and full levels (storage.pool_bytes and ratios), up to the end of the
agreement. Dates come with a band (capacity.yml forecast.confidence): earliest
(the upper band crosses) and latest (the lower band crosses); ">DATE" means
not within the forecast range.

The model is a robust linear trend, with level shifts where a day-to-day jump
is far outside the usual (bulk imports or deletions) and, once a year of
history exists, an academic-year cycle; the band widens with the horizon when
the history behaves like a random walk (docs/capacity.md).

Scenarios, added to the pool (scenario rows are marked *):
  --join CODE:SIZE:GROWTH_PER_YEAR[:DATE]   a new school joins (default DATE: the first forecast day)
  --double-growth CODE                      a school's growth doubles from now""",
        epilog="""\
exit status:
  0  no threshold is reached before the forecast end, even at the band's edge
  1  some threshold is already reached or may be reached (band) before the end
  2  bad input (empty or too-short history, unknown school, date outside the agreement...)

examples:
  moodleops capacity forecast --history history.csv
  moodleops capacity forecast --history history.csv --school ifsi_millau --at 2027-09-01
  moodleops capacity forecast --prometheus http://127.0.0.1:9090 --join ifsi_nouveau:8GB:4GB:2026-09-01
  moodleops capacity forecast --history history.csv --double-growth prefms_ifsi --format json""")
    _add_history_options(fc)
    fc.add_argument("--school", action="append", metavar="CODE", help="only this school (repeatable)")
    fc.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                    help="forecast end, within the agreement (default: its end, platform.yml agreement.end)")
    fc.add_argument("--at", type=_date, metavar="YYYY-MM-DD", help="also show the forecast value on this date")
    fc.add_argument("--join", action="append", metavar="CODE:SIZE:GROWTH[:DATE]",
                    help="scenario: a new school joins (sizes like 5GB; growth per year)")
    fc.add_argument("--double-growth", action="append", metavar="CODE", help="scenario: this school's growth doubles")
    fc.add_argument("--format", choices=("table", "json"), default="table")
    fc.set_defaults(run=cmd_forecast)

    sz = add_command(
        commands, "sizing", summary="web nodes, php-fpm workers, DB memory and connections for next year",
        description="""\
Size next academic year's platform from the load model's summary (JSON,
schema moodleops.loadtest-summary/1: php_fpm_workers, throughput_rps_per_worker,
requests_per_user_per_minute, p95_by_users [{users, p95_ms}]) and the
inventory's population. Workers are the larger of what the busiest hour's
request rate and the p95 target need, plus the stated headroom; the
assumptions (growth, peak ratio, p95 target, headroom, node and database
shapes) are in capacity.yml "sizing".""",
        epilog="""\
examples:
  moodleops capacity sizing --loadtest loadtests/results/summary.json
  moodleops capacity sizing --loadtest summary.json --format json
  moodleops capacity sizing --loadtest results/u20/summary.json results/u40/summary.json results/u80/summary.json

""" + EXIT)
    sz.add_argument("--loadtest", metavar="FILE", type=Path, required=True, nargs="+",
                    help="a sizing summary JSON, or one or more `moodleops loadtest run` summary.json files "
                         "(one point each: run at growing --users)")
    sz.add_argument("--php-fpm-workers", type=int, metavar="N",
                    help="php-fpm workers of the tested stack, for run summaries "
                         "(default: php_fpm_max_children of the inventory)")
    sz.add_argument("--params", metavar="FILE", type=Path, help="planning parameters (default: inventory/capacity.yml)")
    sz.add_argument("--format", choices=("text", "json"), default="text")
    sz.set_defaults(run=cmd_sizing)

    rv = add_command(
        commands, "review", summary="yearly capacity review of a school, as HTML",
        description="""\
Write one HTML report per school (review-<code>-<date>.html, self-contained,
chart as inline SVG; print it to PDF from a browser): usage against the alert
threshold and the pool, growth over the last year, forecast with its band,
largest courses, obsolete-content candidates (courses nobody opened for
capacity.yml review.obsolete_after_days, recycle-bin items older than
review.recyclebin_older_than_days) and accounts.

Moodle figures are read live (read-only) or from --data, a file written
earlier by --save-data (offline review). Storage figures come from the
history (--history or --prometheus); without one, the report has no chart.""",
        epilog="""\
examples:
  moodleops capacity review --school ifsi_millau --history history.csv --out reviews/
  moodleops capacity review --history history.csv --out reviews/ --save-data reviews/data/
  moodleops capacity review --school ifsi_millau --data reviews/data/review-data-ifsi_millau.json \\
      --history history.csv --out reviews/

""" + EXIT)
    _add_history_options(rv)
    rv.add_argument("--school", action="append", metavar="CODE", help="this school (repeatable; default: all)")
    rv.add_argument("--out", metavar="DIR", type=Path, required=True, help="directory for the HTML reports")
    rv.add_argument("--data", metavar="FILE", type=Path, help="recorded Moodle data (offline) instead of live")
    rv.add_argument("--save-data", metavar="DIR", type=Path, help="also save the live Moodle data here")
    rv.set_defaults(run=cmd_review)

    bl = add_command(
        commands, "billing", summary="students per school at the campaign end x rate (due 15 July)",
        description="""\
Count the enrolled students of each school at the end of the enrolment
campaign of YEAR (platform.yml billing.campaign_end) and multiply by the rate
(billing.rate_eur_per_student), for the count due to the Région
(billing.count_due). The counting rule (docs/capacity.md) is printed with the
result. A student of several schools is billed once and listed; suspended
students and accounts without an account type are not billed and are counted
per school.

The data are read live (read-only) or from --snapshot, a file written by
--save-snapshot: keep the snapshot with the count sent, and the count can be
reproduced exactly later.""",
        epilog="""\
exit status:
  0  counted, nothing to look at
  1  counted, with students in several schools or accounts without a type (listed)
  2  bad input (year outside the agreement, unreadable snapshot, database unreachable)

examples:
  moodleops capacity billing --year 2025 --out billing/ --save-snapshot billing/snapshot-2025.json
  moodleops capacity billing --year 2025 --snapshot billing/snapshot-2025.json --format csv""")
    bl.add_argument("--year", type=int, required=True, help="year of the campaign end (e.g. 2025 for 15 July 2025)")
    bl.add_argument("--snapshot", metavar="FILE", type=Path, help="recorded data instead of the live database")
    bl.add_argument("--save-snapshot", metavar="FILE", type=Path, help="save the data read (JSON)")
    bl.add_argument("--out", metavar="DIR", type=Path, help="write billing-YEAR.csv, -shared.csv and .txt here")
    bl.add_argument("--params", metavar="FILE", type=Path, help="planning parameters (default: inventory/capacity.yml)")
    bl.add_argument("--format", choices=("text", "csv", "json"), default="text")
    bl.set_defaults(run=cmd_billing)
