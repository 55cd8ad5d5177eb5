"""`moodleops watch serve`: Moodle's health and abuse signals for Prometheus."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from moodleops.exporters.background import parse_listen, serve_until_signal
from moodleops.exporters.watch_config import thresholds, watch_config
from moodleops.exporters.watch_exporter import WatchExporter

from moodleops.commands import add_area, add_command
from moodleops.inventory import load_inventory
from moodleops.site import SiteError, site_of

DEFAULT_LISTEN = "127.0.0.1:9853"


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "watch", summary="Moodle health and abuse signals (Prometheus exporter)",
        description="""\
What the hosting agreement asks UT to watch beyond storage: cron and tasks,
sessions and users online per school, the versions served against the pins of
moodle.yml, maintenance mode (health); messages sent per school and by the top
senders, failed logins per school and source, new site administrators and new
watched-role assignments (abuse, art. 6.1 and 6.2). Read from Moodle's tables
and standard logstore with the read-only role.""",
        epilog="examples:\n  moodleops watch serve\n  moodleops watch serve --listen 127.0.0.1:9853 --interval 60\n")
    serve = add_command(
        commands, "serve", summary="serve the health and abuse metrics on /metrics",
        description="""\
A background thread reads Moodle's tables every --interval seconds; a scrape
only formats the last read, so it is cheap whatever the load. When a read
fails, the last good values stay served with moodleops_watch_stale 1.
Thresholds (platform.yml watch) are exported as metrics for the alert rules.
--pin-state keeps, across restarts, since when each pin is not served.""",
        epilog="""\
exit status:
  0  stopped by a signal
  1  the address could not be bound
  2  usage error (bad --listen or interval), or the inventory is invalid

examples:
  moodleops watch serve
  moodleops watch serve --listen 127.0.0.1:9853 --interval 60 --pin-state /var/lib/moodleops-watch/pins.json
  curl -s http://127.0.0.1:9853/metrics | grep '^moodle_cron_lag_seconds'""")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help="address to serve /metrics on (default: %(default)s)")
    serve.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                       help="time between two reads (default: %(default)s)")
    serve.add_argument("--pin-state", type=Path, metavar="FILE",
                       help="where to keep since when pins are not served (default: not kept)")
    serve.add_argument("--fpm-status-url", default="", metavar="URL",
                       help="php-fpm's status page to read too, e.g. http://127.0.0.1:8080/fpm-status "
                            "(default: not read)")
    serve.set_defaults(run=run_serve)


def _error(message: str, status: int = 2) -> int:
    print(f"moodleops: error: {message}", file=sys.stderr)
    return status


def run_serve(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return _error(str(exc))
    if args.interval < 5:
        return _error(f"--interval {args.interval} is not valid (at least 5 seconds)")
    inv = load_inventory(args.inventory)
    try:
        cfg = watch_config(inv, site_of(inv), fpm_status_url=args.fpm_status_url)
    except (SiteError, ValueError) as exc:
        return _error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    exporter = WatchExporter(cfg, thresholds(inv), interval_s=args.interval, pin_state=args.pin_state)
    return serve_until_signal(exporter, host, port, listen=args.listen,
                              doing=f"reading Moodle every {args.interval:g} s")
