"""`moodleops storage report|serve`: per-school storage for people and for Prometheus."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moodleops.exporters.background import parse_listen, serve_until_signal
from moodleops.exporters.storage_config import ask_paths, config_from_inventory, paths_source
from moodleops.exporters.storage_drilldown import Node, drilldown
from moodleops.exporters.storage_exporter import PoolPolicy, ScanEvents, StorageExporter, run_scan
from moodleops.exporters.storage_model import BUCKETS, SCHOOL, ScanResult, StoragePaths
from moodleops.exporters.storage_scan import ScanDatabaseError, ScanError

from moodleops.commands import add_area, add_command
from moodleops.inventory import Inventory, load_inventory
from moodleops.site import SiteError, site_of

DEFAULT_LISTEN = "127.0.0.1:9851"


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "storage",
        summary="per-school storage of the shared moodledata pool (report, Prometheus exporter)",
        description="""\
Attribute every byte of Moodle's file pool to a bucket: each school (its
top-level category and everything below it, recycle bin included), users'
own files, drafts (reported apart: Moodle purges them after 4 days), the
system and site level, files whose context is gone, and top-level categories
no school of the inventory claims ("unmapped").

For each bucket: files, logical bytes (sum over rows, what report_coursesize
shows), unique bytes (distinct contents: the school's quota figure), exclusive
bytes (what emptying the bucket would free) and apportioned bytes (a content
shared by k buckets counts 1/k to each; the shares add up to the pool).

Reads the database as the read-only role (moodle_db_ro_user) in one snapshot.""",
        epilog="""\
examples:
  moodleops storage report
  moodleops storage report --school ifms_albi
  moodleops storage report --format json --walk
  moodleops storage serve --listen 127.0.0.1:9851 --interval 900""",
    )

    report = add_command(
        commands, "report",
        summary="print the storage of each school, or of one school by year and course",
        description="""\
Scan now and print one line per school (unique bytes against the school's
alert threshold, accounts), the other buckets and the pool. With --school,
print that school by year (its subcategories) and course instead.

Sizes are decimal GB/MB, as in the agreement. --walk also walks filedir to
count orphan contents (on disk, no row) and missing ones (row, no disk): this
reads every directory of the pool and can take long on NFS.""",
        epilog="""\
exit status:
  0  every school is under its threshold and the scan found nothing wrong
  1  a school is over its threshold, a school's category is missing or moved
     under another category, the filedir walk hit unreadable entries or a
     filesystem call hung
  2  usage error (e.g. an unknown school code), or the inventory is invalid
  4  the database could not be read (down, password, grant, statement timeout)

examples:
  moodleops storage report
  moodleops storage report --school ifsi_millau --format csv > millau.csv
  moodleops --inventory production storage report --format json | jq '.schools'""",
    )
    report.add_argument("--school", metavar="CODE", help="drill down into one school (a code of schools.yml)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table for people, json or csv for scripts (default: %(default)s)")
    report.add_argument("--walk", action="store_true", help="also walk filedir (orphans, missing contents)")
    report.set_defaults(run=run_report)

    serve = add_command(
        commands, "serve",
        summary="run the Prometheus exporter",
        description="""\
Serve the storage metrics over HTTP (/metrics) for Prometheus. A background
thread scans every --interval seconds; a scrape only formats the last result,
so scrapes are cheap and any number of Prometheus servers can scrape without
adding database load. filedir is walked every --walk-interval seconds.

When a scan fails (database down, timeout), the last good values stay served,
moodleops_exporter_stale becomes 1 and moodleops_exporter_scan_errors_total
grows; scans go on at the same interval and the exporter recovers by itself.
Metrics: moodle_storage_* (labels bucket, school) and moodleops_exporter_*.
Stops on SIGTERM or Ctrl-C.""",
        epilog="""\
exit status:
  0  stopped by a signal
  2  usage error (bad --listen or interval), or the inventory is invalid
  1  the address could not be bound

examples:
  moodleops storage serve
  moodleops storage serve --listen 127.0.0.1:9851 --interval 600 --walk-interval 604800
  curl -s http://127.0.0.1:9851/metrics | grep '^moodle_storage_unique_bytes'""",
    )
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help="address to serve /metrics on (default: %(default)s)")
    serve.add_argument("--interval", type=float, default=900.0, metavar="SECONDS",
                       help="time between two scans (default: %(default)s)")
    serve.add_argument("--walk-interval", type=float, default=86400.0, metavar="SECONDS",
                       help="time between two filedir walks (default: %(default)s)")
    serve.add_argument("--full-walk-interval", type=float, default=7 * 86400.0, metavar="SECONDS",
                       help="time between two full walks; walks in between list only the ab/cd "
                            "directories that changed (needs --walk-state; default: %(default)s)")
    serve.add_argument("--walk-state", type=Path, metavar="FILE",
                       help="where the incremental walk keeps what the last walk saw (without it: always full)")
    serve.add_argument("--fs-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="a filesystem call longer than this abandons the walk, reported stuck "
                            "(default: %(default)s)")
    serve.add_argument("--no-walk", action="store_true", help="never walk filedir")
    serve.set_defaults(run=run_serve)

    am = add_command(
        commands, "alertmanager-config",
        summary="write the Alertmanager configuration generated from the inventory",
        description="""\
Print an Alertmanager configuration (YAML) that routes each school's storage
alerts (scope=school) to that school's referents (schools.yml) and every
other storage alert (pool, exporter) to the UT sysadmins. Alerts for a school
the inventory does not know go to the sysadmins. Check the output with
`amtool check-config`.""",
        epilog="""\
exit status:
  0  configuration written
  2  usage error (no sysadmin address, no delivery), or the inventory is invalid

examples:
  moodleops storage alertmanager-config --sysadmin unix-team@example.org \\
      --smtp-smarthost smtp.example.org:25 --smtp-from moodle-alerts@example.org > alertmanager.yml
  moodleops storage alertmanager-config --sysadmin ops@example.invalid --webhook http://127.0.0.1:9099""",
    )
    am.add_argument("--sysadmin", action="append", default=[], metavar="ADDR",
                    help="sysadmin mailbox (repeatable; default: monitoring_sysadmin_emails of the inventory)")
    am.add_argument("--smtp-smarthost", metavar="HOST:PORT", help="SMTP relay (default: monitoring_smtp_smarthost)")
    am.add_argument("--smtp-from", metavar="ADDR", help="sender address (default: monitoring_smtp_from)")
    am.add_argument("--webhook", metavar="URL", help="deliver to <URL>/<receiver> webhooks instead of e-mail")
    am.set_defaults(run=run_alertmanager_config)


def _error(message: str, status: int = 2) -> int:
    print(f"moodleops: error: {message}", file=sys.stderr)
    return status


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def run_report(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    if args.school is not None and args.school not in {s.code for s in inv.schools}:
        return _error(f"--school {args.school!r} is not a school of the inventory "
                      f"(one of: {', '.join(s.code for s in inv.schools)})")
    try:
        site = site_of(inv)
        cfg, notes = config_from_inventory(inv, site, walk_filedir=args.walk)
    except (SiteError, ValueError) as exc:
        return _error(str(exc))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    try:
        if args.school is not None:
            spec = next(s for s in cfg.schools if s.code == args.school)
            print(render_drilldown(drilldown(cfg, spec), args.format), end="")
            return 0
        print(f"scanning {cfg.db.describe()}{' and ' + str(cfg.paths.filedir) if args.walk else ''} ...",
              file=sys.stderr)
        result = run_scan(cfg, ScanEvents(on_db=_said_db, on_progress=_Progress()))
    except ScanError as exc:
        if exc.__cause__ is not None or isinstance(exc, ScanDatabaseError):
            raise   # the database's fault: one line and status 4 from the top-level command
        return _error(str(exc), 1)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(render_report(result, inv, args.format), end="")
    over = [s.code for s in cfg.schools if result.school(s.code).unique_bytes > s.alert_bytes]
    walk_errors = result.pool.filedir.errors if result.pool.filedir else []
    for e in walk_errors[:20]:
        print(f"warning: filedir: {e}", file=sys.stderr)
    misplaced = [c for c in result.category_problems if c.problem != "renamed"]
    return 1 if over or misplaced or walk_errors else 0


def _said_db(r: ScanResult) -> None:
    print(f"database read in {r.db_duration_s:.1f} s (transaction closed); now the disk ...", file=sys.stderr)


class _Progress:
    """A line on stderr every 10 s while the disk part runs."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last >= 10:
            self._last = now
            print(f"  {p.get('phase')}: {100 * float(p.get('ratio', 0)):.0f} % of filedir, "
                  f"{p.get('blobs', 0)} blobs, {p.get('dirs_listed', 0)} directories listed", file=sys.stderr)


def report_dict(r: ScanResult, inv: Inventory) -> dict[str, Any]:
    schools = []
    for s in inv.schools:
        b = r.school(s.code)
        acc = r.accounts.get(s.code)
        schools.append({"school": s.code, "name": s.name, **vars(b).copy(), "alert_bytes": s.alert_bytes,
                        "accounts_active": acc.active if acc else 0,
                        "accounts_suspended": acc.suspended if acc else 0,
                        "accounts_hosted_expiring": acc.hosted_expiring if acc else None,
                        "missing_category": s.code in r.missing_schools,
                        "category_problems": [c.problem for c in r.category_problems if c.school == s.code],
                        "course_backups": sum(1 for bk in r.backups if bk.school == s.code),
                        "course_backup_bytes": sum(bk.size for bk in r.backups if bk.school == s.code)})
    others = [{"bucket": k, **vars(r.bucket(k)).copy()} for k in BUCKETS if k != SCHOOL]
    pool = vars(r.pool).copy()
    pool["filedir"] = vars(r.pool.filedir).copy() if r.pool.filedir else None
    return {"scanned_at": r.started_at, "duration_s": round(r.duration_s, 3), "schools": schools,
            "buckets": others, "pool": pool, "hosted_expiry": r.hosted_expiry.isoformat(),
            "unmapped_categories": [vars(c) for c in r.unmapped_categories],
            "category_problems": [vars(c) for c in r.category_problems],
            "course_backups": [vars(b) for b in r.backups],
            "inconsistent_hashes": r.inconsistent_hashes, "warnings": r.warnings}


_COLS = ("files", "logical_bytes", "unique_bytes", "exclusive_bytes", "apportioned_bytes")


def render_report(r: ScanResult, inv: Inventory, fmt: str) -> str:
    d = report_dict(r, inv)
    if fmt == "json":
        return json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["bucket", "school", *_COLS, "alert_bytes", "accounts_active", "accounts_suspended",
                     "accounts_hosted_expiring"])
        for s in d["schools"]:
            w.writerow([SCHOOL, s["school"], *(s[c] for c in _COLS), s["alert_bytes"], s["accounts_active"],
                        s["accounts_suspended"], "" if s["accounts_hosted_expiring"] is None
                        else s["accounts_hosted_expiring"]])
        for b in d["buckets"]:
            w.writerow([b["bucket"], "", *(b[c] for c in _COLS), "", "", "", ""])
        return out.getvalue()
    header = ("school", "files", "logical GB", "unique GB", "excl. GB", "share GB", "alert GB", "% alert",
              "active", "susp.", "hosted")
    rows: list[tuple[str, ...]] = []
    for s in d["schools"]:
        hosted = s["accounts_hosted_expiring"]
        mark = f" (category {'/'.join(s['category_problems'])}!)" if s["category_problems"] else ""
        rows.append((s["school"] + mark, str(s["files"]),
                     gb(s["logical_bytes"]), gb(s["unique_bytes"]), gb(s["exclusive_bytes"]),
                     gb(s["apportioned_bytes"]), gb(s["alert_bytes"]),
                     f"{100 * s['unique_bytes'] / s['alert_bytes']:.1f}", str(s["accounts_active"]),
                     str(s["accounts_suspended"]), "?" if hosted is None else str(hosted)))
    for b in d["buckets"]:
        rows.append((f"[{b['bucket']}]", str(b["files"]), gb(b["logical_bytes"]), gb(b["unique_bytes"]),
                     gb(b["exclusive_bytes"]), gb(b["apportioned_bytes"]), "", "", "", "", ""))
    lines = _table(header, rows, numeric=set(range(1, len(header))))
    p = r.pool
    lines.append("")
    lines.append(f"pool: {gb(p.distinct_bytes)} GB of distinct content in {p.distinct_blobs} blobs, "
                 f"{100 * p.distinct_bytes / p.pool_bytes:.2f} % of the {gb(p.pool_bytes)} GB pool")
    if p.fs_capacity_bytes:
        lines.append(f"filesystem: {gb(p.fs_used_bytes or 0)} GB used of {gb(p.fs_capacity_bytes)} GB")
    lines.append("outside filedir: " + ", ".join(f"{k} {gb(v)} GB" for k, v in sorted(p.dir_bytes.items())))
    if p.filedir is not None:
        f = p.filedir
        lines.append(f"filedir: {f.blobs} blobs, {gb(f.bytes)} GB; orphans {f.orphan_blobs} "
                     f"({gb(f.orphan_bytes)} GB); missing {f.missing_blobs} ({gb(f.missing_bytes)} GB); "
                     f"{len(f.errors)} unreadable entries")
    ext = [(b["bucket"], b["external_refs"], b["external_claimed_bytes"]) for b in d["buckets"]]
    ext += [(f"school {s['school']}", s["external_refs"], s["external_claimed_bytes"]) for s in d["schools"]]
    if any(n for _, n, _ in ext):
        lines.append("external references (aliases to external repositories, not stored, not counted above): "
                     + ", ".join(f"{w} {n} claiming {gb(c)} GB" for w, n, c in ext if n))
    if r.backups:
        lines.append("course backups tied to their course's school (counted in that school when in a "
                     "user's backup area; automated ones are outside the pool):")
        for bk in r.backups:
            lines.append(f"  {bk.school or '(no school)'}  course {bk.course_id}  {bk.where}  {bk.name}  "
                         f"{bk.size / 1e6:.1f} MB")
    for c in r.category_problems:
        lines.append(f"category {c.problem}: {c.detail}")
    lines.append(f"hosted accounts expire on {r.hosted_expiry.isoformat()}; scan took {r.duration_s:.1f} s")
    return "\n".join(lines) + "\n"


def render_drilldown(root: Node, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(root.as_dict(), indent=2, ensure_ascii=False) + "\n"
    flat: list[tuple[str, str, Node]] = []
    for year in sorted(root.children.values(), key=lambda n: -n.unique_bytes):
        flat.append((year.name, "", year))
        for course in sorted(year.children.values(), key=lambda n: -n.unique_bytes):
            flat.append((year.name, course.name, course))
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["year", "course", "files", "logical_bytes", "unique_bytes"])
        w.writerow(["", "", root.files, root.logical_bytes, root.unique_bytes])
        for y, c, n in flat:
            w.writerow([y, c, n.files, n.logical_bytes, n.unique_bytes])
        return out.getvalue()
    rows = [(f"{root.name} (total)", "", str(root.files), f"{root.logical_bytes / 1e6:.1f}",
             f"{root.unique_bytes / 1e6:.1f}")]
    for y, c, n in flat:
        rows.append((y if not c else "", c, str(n.files), f"{n.logical_bytes / 1e6:.1f}",
                     f"{n.unique_bytes / 1e6:.1f}"))
    return "\n".join(_table(("year", "course", "files", "logical MB", "unique MB"), rows,
                            numeric={2, 3, 4})) + "\n"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], numeric: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def run_serve(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return _error(str(exc))
    for name in ("interval", "walk_interval", "full_walk_interval", "fs_timeout"):
        if getattr(args, name) < 10:
            return _error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid (at least 10 seconds)")
    if args.walk_state is not None and not args.walk_state.parent.is_dir():
        return _error(f"--walk-state {args.walk_state}: directory {args.walk_state.parent} does not exist")
    inv = load_inventory(args.inventory)
    try:
        site = site_of(inv)
        got, notes = ask_paths(site)
        cfg, more = config_from_inventory(inv, site, paths=got or StoragePaths.defaults(site.dataroot),
                                          walk_filedir=not args.no_walk)
        notes += more
        cfg = dataclasses.replace(cfg, walk_state=args.walk_state, fs_call_timeout_s=args.fs_timeout)
    except (SiteError, ValueError) as exc:
        return _error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for n in notes:
        logging.getLogger("moodleops.storage").warning("%s", n)
    exporter = StorageExporter(cfg, PoolPolicy(inv.platform.pool_warning_ratio, inv.platform.pool_critical_ratio),
                               interval_s=args.interval, walk_interval_s=args.walk_interval,
                               full_walk_interval_s=args.full_walk_interval,
                               paths_source=None if got is not None else paths_source(site))
    return serve_until_signal(exporter, host, port, listen=args.listen, doing=f"scanning every {args.interval:g} s")


def run_alertmanager_config(args: argparse.Namespace) -> int:
    import yaml
    from moodleops.exporters.alerting import Delivery, alertmanager_config

    inv = load_inventory(args.inventory)
    v = inv.vars
    sysadmins = args.sysadmin or list(v.get("monitoring_sysadmin_emails") or [])
    require_tls = v.get("monitoring_smtp_require_tls", True)
    if not isinstance(require_tls, bool):
        return _error(f"monitoring_smtp_require_tls: {require_tls!r} is not true or false (inventory group_vars)")
    try:
        delivery = Delivery(smtp_smarthost=args.smtp_smarthost or str(v.get("monitoring_smtp_smarthost") or ""),
                            smtp_from=args.smtp_from or str(v.get("monitoring_smtp_from") or ""),
                            webhook_base=args.webhook or "", smtp_require_tls=require_tls)
        cfg = alertmanager_config(inv, sysadmins, delivery)
    except ValueError as exc:
        return _error(f"{exc} (set monitoring_sysadmin_emails, monitoring_smtp_smarthost and "
                      "monitoring_smtp_from in the inventory's group_vars, or pass the options)")
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0
