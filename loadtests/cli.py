"""`moodleops loadtest model|prepare|inspect|record|cleanup|run`.

On a machine that is not a web node (the operator's side of the rehearsal),
prepare, inspect and cleanup run on the first web node over SSH
(loadtests/remote.py); `run` plays from here."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from moodleops.loadtests import fixture as fx
from moodleops.loadtests import remote
from moodleops.loadtests.model import SHAPES, Population, load_model, shape_load
from moodleops.loadtests.runner import (
    MAX_USERS_WITHOUT_FORCE,
    LocustFailed,
    RunRequest,
    fixture_size,
    make_plan,
    run,
)
from moodleops.loadtests.ssh import SshOptions, WorkerHostError

from moodleops.commands import add_area, add_command
from moodleops.errors import ExitStatus
from moodleops.faults import moodle_http_preflight
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.rehearsal.spec import own_addresses
from moodleops.site import site_of

# Exit statuses of `moodleops loadtest run` (one table, for the CLI's central one).
EXIT_PASS = ExitStatus.OK                  # every SLO held and every page type ran enough
EXIT_SLO_FAILED = ExitStatus.PROBLEMS      # an SLO was violated
EXIT_USAGE = ExitStatus.USAGE              # bad option, refused target/inventory, no or too small a fixture
EXIT_INCONCLUSIVE = ExitStatus.INCONCLUSIVE  # nothing violated, but a page type ran too rarely to judge
EXIT_RUN_FAILED = ExitStatus.DEPENDENCY    # Locust failed (status, no statistics, timeout), SSH to a worker failed
RUN_EXIT_STATUS = {
    EXIT_PASS: "the run held every SLO (peak-window p95 per page type, error rate) with every page type judged",
    EXIT_SLO_FAILED: "an SLO was violated (listed on stdout)",
    EXIT_USAGE: "bad option, non-loopback target without --force-production, no fixture, or a fixture with "
                "fewer accounts than the shape's concurrent sessions",
    EXIT_INCONCLUSIVE: "INCONCLUSIVE: no SLO violated, but a page type of the shape ran fewer than "
                       "run.min_requests_per_page times after warm-up (listed); run longer or with more users",
    EXIT_RUN_FAILED: "the load test itself failed (Locust's exit status, no statistics, a worker host "
                     "unreachable over SSH), or Moodle over HTTP refused, answered 5xx or is in maintenance "
                     "before it started (one line on stderr, nothing run)",
}


def _exit_table() -> str:
    return "exit status:\n" + "\n".join(f"  {code}  {text}" for code, text in RUN_EXIT_STATUS.items())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid (an integer >= 1)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid (a number > 0)")
    return value


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "loadtest",
        summary="load model, test fixture and Locust runs with SLO verdicts",
        description="""\
Model and test the load of the platform's ~4,200 accounts. The concurrency
model and the service levels are data (inventory/loadmodel.yml); the
population comes from inventory/schools.yml. `prepare` creates test accounts
and a course (forum, quiz, assignment, file) through Moodle; `run` plays one
calendar shape (weekday, september, exam, deadline, smoke) with Locust against
the target and judges it against the SLOs; `cleanup` removes the fixture.

Load goes only to loopback targets, and prepare/cleanup act only on a
loopback-only inventory, unless --force-production is given.""",
        epilog="""\
examples:
  moodleops loadtest model --scale 2
  moodleops loadtest prepare --prefix lt2025a --students 150 --trainers 10
  moodleops loadtest run --prefix lt2025a --shape exam --users 100 --duration 300
  moodleops loadtest cleanup --prefix lt2025a --yes""",
    )

    model = add_command(commands, "model", summary="print the concurrency model for the population",
                        description="""\
Turn the accounts of every school into peak concurrent sessions, session
arrival rates and page rates, for each calendar shape, with the parameters of
inventory/loadmodel.yml.""",
                        epilog="""\
exit status:
  0  printed
  2  the inventory or loadmodel.yml is invalid

examples:
  moodleops loadtest model
  moodleops loadtest model --scale 2 --format json""")
    model.add_argument("--scale", type=_positive_float, default=1.0,
                       help="multiply every school's accounts (2 = numbers double; default 1)")
    model.add_argument("--questions", type=_positive_int, default=20, help="exam questions (default: 20)")
    model.add_argument("--format", choices=("table", "json"), default="table")
    model.set_defaults(run=run_model)

    force_help = "act on an inventory or target that is not loopback-only (production)"

    prep = add_command(commands, "prepare", summary="create test users and a test course through Moodle",
                       description="""\
Create, through Moodle's testing data generator (moodleops/php/loadtest_fixture.php),
a category and course named after PREFIX with a forum and a discussion, a quiz of
true/false questions, an assignment taking one file and a file resource, plus
PREFIXs0001.. student and PREFIXt0001.. trainer accounts enrolled in it;
--courses courses are spread over the categories of as many schools of the
inventory, each with its own forum, quiz, assignment and a course document
whose size is drawn from the model's file sizes (loadmodel.yml files:).
--for-shape sizes the accounts from the model: at least the concurrent
sessions of that shape's peak per role (a run refuses fewer). The ids
and the accounts' random password are recorded in FIXTURE_DIR/PREFIX.json (0600).
If anything fails, what was created is removed again.""",
                       epilog="""\
exit status:
  0  prepared
  2  bad option, invalid inventory, or an inventory that is neither loopback-only nor a rehearsal
  4  Moodle (its PHP CLI) failed, or SSH to the first web node (from a machine that is not one): one line

examples:
  moodleops loadtest prepare --prefix lt2025a --students 150 --trainers 10""")
    prep.add_argument("--prefix", type=str, default=None,
                      help="unique prefix: lt + 3..20 of [a-z0-9] (default: a random one, printed)")
    prep.add_argument("--students", type=_positive_int, default=30)
    prep.add_argument("--trainers", type=_positive_int, default=3)
    prep.add_argument("--questions", type=_positive_int, default=5, help="quiz questions, one per page")
    prep.add_argument("--courses", type=_positive_int, default=3,
                      help="courses, spread over as many of the inventory's schools (default: 3)")
    prep.add_argument("--for-shape", choices=SHAPES, metavar="NAME", default=None,
                      help="at least the accounts that shape needs at its peak (with --users and --workers)")
    prep.add_argument("--users", type=_positive_int, default=None, help="with --for-shape: the peak users")
    prep.add_argument("--workers", type=int, default=0, help="with --for-shape: the Locust workers")
    prep.add_argument("--force-production", action="store_true", help=force_help)
    prep.add_argument("--fixture-dir", type=Path, default=None,
                      help="where fixture records live (default: <moodleops_state_dir>/loadtests)")
    prep.set_defaults(run=run_prepare)

    insp = add_command(commands, "inspect", summary="count what simulated users left in Moodle",
                       description="Finished quiz attempts, forum replies and submitted files of PREFIX's users.",
                       epilog="""\
exit status:
  0  printed (JSON)
  2  bad option

examples:
  moodleops loadtest inspect --prefix lt2025a""")
    insp.add_argument("--prefix", required=True)
    insp.set_defaults(run=run_inspect)

    rec = add_command(commands, "record", summary="print a prepared fixture's record (JSON, with its password)",
                      description="""\
Print FIXTURE_DIR/PREFIX.json: what `run` needs of a fixture (accounts, ids and
the accounts' password). `prepare` from a machine that is not a web node runs
on the first web node over SSH and keeps this record on the operator's side.""",
                      epilog="""\
exit status:
  0  printed (JSON)
  2  bad option, no such fixture

examples:
  moodleops loadtest record --prefix lt2025a""")
    rec.add_argument("--prefix", required=True)
    rec.add_argument("--fixture-dir", type=Path, default=None)
    rec.set_defaults(run=run_record)

    clean = add_command(commands, "cleanup", summary="remove a fixture (dry run unless --yes)",
                        description="""\
List, then with --yes delete through Moodle (delete_course, delete_user), the
course, category and users that `prepare` created for PREFIX. Only records
carrying the fixture's marker are touched.""",
                        epilog="""\
exit status:
  0  listed (dry run) or removed
  2  bad option, or an inventory that is neither loopback-only nor a rehearsal
  4  Moodle (its PHP CLI) failed, or SSH to the first web node (from a machine that is not one): one line

examples:
  moodleops loadtest cleanup --prefix lt2025a
  moodleops loadtest cleanup --prefix lt2025a --yes""")
    clean.add_argument("--prefix", required=True)
    clean.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
    clean.add_argument("--force-production", action="store_true", help=force_help)
    clean.add_argument("--fixture-dir", type=Path, default=None)
    clean.set_defaults(run=run_cleanup)

    r = add_command(commands, "run", summary="play a load shape headless and judge it against the SLOs",
                    description=f"""\
Play one calendar shape of the model with Locust (FastHttpUser, real Moodle
flows with content checks) against the target, headless, for --duration wall
seconds. The scenario's natural length is compressed into that duration
(a 24 h weekday in 600 s runs at x144), and so are think times, so whole
sessions fit and the page mix stays the model's (each user then requests
x144 faster than a person: choose --users for the load you want).
--think-scale multiplies think times further. --users is the peak number of
simulated users (concurrent sessions); default: the model's peak for the
population. The fixture needs at least as many accounts per role as the
peak's concurrent sessions. Warm-up is left out; the p95 judged is the
busiest window's; php-fpm, PostgreSQL and CPU are sampled into the summary.

With --workers N and load-generator hosts in the inventory that are not this
machine, the workers are started there over SSH (same checkout at the same
path; --ssh-* options).

Writes into the results directory: plan.json, Locust's CSVs (the summary reads
locust_stats_final.csv, written as Locust quits), report.html and summary.json (schema
moodleops-loadtest-summary/1, see docs/loadtests.md), then prints the verdict.

shapes: {", ".join(SHAPES)}""",
                    epilog=_exit_table() + """

examples:
  moodleops loadtest run --prefix lt2025a --shape smoke --think-scale 0.01
  moodleops loadtest run --prefix lt2025a --shape exam --users 100 --duration 300
  moodleops loadtest run --prefix lt2025a --shape weekday --duration 600 --workers 2""")
    r.add_argument("--prefix", required=True, help="the fixture to use (from prepare)")
    r.add_argument("--shape", required=True, choices=SHAPES, metavar="NAME")
    r.add_argument("--users", type=_positive_int, default=None, help=f"peak users (<= {MAX_USERS_WITHOUT_FORCE})")
    r.add_argument("--duration", type=_positive_float, default=60.0, help="wall seconds (default: 60)")
    r.add_argument("--workers", type=int, default=0,
                   help="Locust worker processes (0 = one process; >0: master + workers, local when the "
                        "inventory's loadgen hosts are loopback)")
    r.add_argument("--think-scale", type=_positive_float, default=1.0,
                   help="multiply think times (1 = realistic; 0.01 for a quick functional run)")
    r.add_argument("--scale", type=_positive_float, default=1.0, help="multiply the population")
    r.add_argument("--start-hour", type=float, default=0.0, help="weekday: hour of day the run starts at")
    r.add_argument("--target", default=None, help="base URL (default: the inventory's wwwroot)")
    r.add_argument("--results", type=Path, default=None,
                   help="results directory (default: ./loadtest-results/<shape>-<UTC time>)")
    r.add_argument("--force-production", action="store_true", help="allow a non-loopback target")
    r.add_argument("--fixture-dir", type=Path, default=None)
    r.add_argument("--quiet", action="store_true", help="do not echo Locust's progress")
    r.add_argument("--ssh-user", default=None, help="remote workers: SSH user (default: ssh's)")
    r.add_argument("--ssh-port", type=_positive_int, default=None,
                   help="remote workers: SSH port (default: the host's ansible_port, else 22)")
    r.add_argument("--ssh-key", type=Path, default=None, help="remote workers: private key file")
    r.add_argument("--ssh-known-hosts", type=Path, default=None,
                   help="remote workers: known_hosts file (host keys are always checked)")
    r.set_defaults(run=run_run)


def _fail(msg: str) -> int:
    print(f"moodleops: error: {msg}", file=sys.stderr)
    return 2


def _error(exc: fx.LoadtestError) -> int:
    """One line; the web node's own status when the command failed there."""
    if isinstance(exc, remote.RemoteFailed):
        print(f"moodleops: error: {exc}", file=sys.stderr)
        return exc.status
    return _fail(str(exc))


def _fixture_dir(args: argparse.Namespace, inv_site_state: Path) -> Path:
    return args.fixture_dir if args.fixture_dir is not None else inv_site_state / "loadtests"


def run_model(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    model = load_model(inv)
    pop = Population.of(inv, args.scale)
    loads = [shape_load(name, model, pop, questions=args.questions) for name in SHAPES if name != "smoke"]
    if args.format == "json":
        print(json.dumps({"population": pop.__dict__, "shapes": {
            s.shape: {"peak_concurrent": s.peak_concurrent, "peak_arrivals_per_s": s.peak_arrivals_per_s,
                      "peak_pages_per_s": s.peak_pages_per_s, "natural_duration_s": s.natural_duration_s,
                      **s.detail} for s in loads}}, indent=2))
        return 0
    print(f"population x{args.scale:g}: {pop.students} students, {pop.trainers} trainers "
          f"(largest school {pop.largest_school_students} students); model {model.path}")
    print(f"{'shape':<10} {'peak users':>10} {'arrivals/s':>11} {'pages/s':>8}  detail")
    for s in loads:
        detail = ", ".join(f"{k}={v:.3g}" for k, v in s.detail.items())
        print(f"{s.shape:<10} {s.peak_concurrent:>10.1f} {s.peak_arrivals_per_s:>11.3f} "
              f"{s.peak_pages_per_s:>8.2f}  {detail}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    try:
        fx.guard_inventory(inv, args.force_production, "prepare a load-test fixture")
        prefix = fx.check_prefix(args.prefix) if args.prefix else fx.new_prefix()
        site = site_of(inv)
        model = load_model(inv)
        students, trainers = args.students, args.trainers
        if args.for_shape:
            need_s, need_t = fixture_size(args.for_shape, inv, model, users=args.users, workers=args.workers,
                                          questions=args.questions)
            students, trainers = max(students, need_s), max(trainers, need_t)
        schools = [s.name for s in inv.schools][:args.courses]
        fixture_dir = _fixture_dir(args, site.state_dir)
        if not site.moodle_here:
            # Moodle is on the web nodes: prepare there, keep the record here for `run`.
            if fx.fixture_file(fixture_dir, prefix).exists():
                return _fail(f"--prefix: {prefix!r} is already prepared ({fx.fixture_file(fixture_dir, prefix)}); "
                             "run cleanup first")
            node = remote.first_web_node(inv).name
            print(f"preparing {prefix} on {node} over SSH (Moodle is not on this machine) ...", flush=True)
            remote.on_web_node(inv, "loadtest", "prepare", "--prefix", prefix, "--students", str(students),
                               "--trainers", str(trainers), "--questions", str(args.questions),
                               "--courses", str(args.courses))
            remote.fetch_record(inv, prefix, fixture_dir)
            print(f"fixture record of {prefix} saved in {fx.fixture_file(fixture_dir, prefix)} (0600)")
            return 0
        print(f"preparing {prefix}: {students} students, {trainers} trainers, {args.courses} course(s) in "
              f"{len(schools)} school(s), {args.questions} questions on {site.wwwroot} ...", flush=True)
        rec = fx.prepare(MoodleCLI(site), prefix, students=students, trainers=trainers,
                         questions=args.questions, directory=fixture_dir,
                         schools=schools, courses=args.courses, sizes=model.submission_sizes)
    except fx.LoadtestError as exc:
        return _error(exc)
    print(f"prepared {prefix}: course {rec['course_id']}, quiz cm {rec['quiz_cmid']}, "
          f"assignment cm {rec['assign_cmid']}, forum cm {rec['forum_cmid']}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    try:
        site = site_of(inv)
        if not site.moodle_here:
            print(remote.on_web_node(inv, "loadtest", "inspect", "--prefix", fx.check_prefix(args.prefix),
                                     capture=True), end="")
            return 0
        print(json.dumps(fx.inspect(MoodleCLI(site), args.prefix), indent=2))
    except fx.LoadtestError as exc:
        return _error(exc)
    return 0


def run_record(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    try:
        print(json.dumps(fx.load_fixture(_fixture_dir(args, site_of(inv).state_dir), args.prefix), indent=2))
    except fx.LoadtestError as exc:
        return _error(exc)
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    try:
        fx.guard_inventory(inv, args.force_production, "clean up a load-test fixture")
        site = site_of(inv)
        if not site.moodle_here:
            remote.on_web_node(inv, "loadtest", "cleanup", "--prefix", fx.check_prefix(args.prefix),
                               *(["--yes"] if args.yes else []))
            if args.yes:
                fx.fixture_file(_fixture_dir(args, site.state_dir), args.prefix).unlink(missing_ok=True)
            return 0
        res = fx.cleanup(MoodleCLI(site), args.prefix, apply=args.yes,
                         directory=_fixture_dir(args, site.state_dir))
    except fx.LoadtestError as exc:
        return _error(exc)
    verb = "removed" if args.yes else "would remove (dry run; --yes to apply)"
    print(f"{verb}: {len(res['courses'])} course(s) {', '.join(res['courses'])}, {res['users']} user(s), "
          f"category {res['category']}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    try:
        model = load_model(inv)
        site = site_of(inv)
        target = fx.guard_target(args.target or site.wwwroot, args.force_production, own_addresses(inv))
        if args.workers < 0 or args.workers > 64:
            return _fail(f"--workers: {args.workers} is not valid (0 to 64)")
        if not 0 <= args.start_hour < 24:
            return _fail(f"--start-hour: {args.start_hour:g} is not valid (0 to 24)")
        fixture = fx.load_fixture(_fixture_dir(args, site.state_dir), args.prefix)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        results = args.results or Path("loadtest-results") / f"{args.shape}-{stamp}"
        req = RunRequest(shape=args.shape, users=args.users, duration_s=args.duration, workers=args.workers,
                         think_scale=args.think_scale, scale=args.scale, start_hour=args.start_hour,
                         results_dir=results.resolve(), target=target,
                         ssh=SshOptions(user=args.ssh_user, port=args.ssh_port, identity=args.ssh_key,
                                        known_hosts=args.ssh_known_hosts))
        make_plan(req, inv, model, fixture)          # bad input is refused before any service is asked
        moodle_http_preflight(target, ca_bundle=inv.settings.ca_bundle)  # refused, 5xx or maintenance: one line, no Locust started
        print(f"running {args.shape} against {target} for {args.duration:g} s -> {req.results_dir}", flush=True)
        summary = run(req, inv, model, fixture, echo=not args.quiet, site=site)
    except WorkerHostError as exc:
        # Workers could not be started: Locust's master was stopped, Moodle saw no load.
        exc.done = exc.done or "no load was sent (the Locust master was stopped); re-run when the host answers"
        print(f"moodleops: error: {exc.line()}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except LocustFailed as exc:
        print(f"moodleops: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except fx.LoadtestError as exc:
        return _error(exc)
    return report_run(summary, req.results_dir / "summary.json")


def report_run(summary: dict, path: Path) -> int:
    t = summary["totals"]
    print(f"{summary['shape']}: {summary['users']} users, {t['requests']} requests, {t['rps']:.2f} req/s, "
          f"error rate {t['error_rate']:.2%}, p95 {t['p95_ms']:g} ms (whole run)")
    peak = summary.get("peak_window")
    if peak:
        pt = peak["totals"]
        print(f"peak window {peak['from_s']:g}-{peak['to_s']:g} s: {pt['rps']:.2f} req/s, p95 {pt['p95_ms']:g} ms")
        for node, f in (peak.get("nodes") or {}).items():
            print(f"  served by {node}: {f['rps']:.2f} req/s, p95 {f['p95_ms']:g} ms, {f['failures']} failed")
    if summary.get("load_generators"):
        print(f"workers on {', '.join(summary['load_generators'])}")
    for line in summary.get("load_generator_problems") or []:
        print(f"  load generator: {line}")
    mix = summary.get("mix") or {}
    if mix:
        print(f"page mix: furthest {mix['worst_page']} by {mix['gap']:.3f} (tolerance {mix['tolerance']:g})")
    server = summary.get("server") or {}
    if server:
        print(f"saturated first: {server.get('first_saturated') or 'nothing'}"
              + (f" (errors sampling: {', '.join(server['errors'])})" if server.get("errors") else ""))
    verdict = summary["verdict"]
    print(f"SLO verdict: {verdict['status']} ({path})")
    for v in verdict["violations"]:
        print(f"  {v['page']}: {v['metric']} {v['value']:g} > {v['limit']:g} ({v.get('scope', 'run')})")
    for m in verdict.get("missing", []):
        print(f"  {m['page']}: ran {m['requests']} time(s) after warm-up, at least {m['minimum']} needed")
    return {"PASS": EXIT_PASS, "FAIL": EXIT_SLO_FAILED}.get(verdict["status"], EXIT_INCONCLUSIVE)
