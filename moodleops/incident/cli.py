"""`moodleops incident`: suspend / reinstate, messaging suspension, account expiry;
recover an interrupted incident; verify the journal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

from moodleops.commands import add_area, add_command
from moodleops.errors import exit_table_text
from moodleops.faults import translate
from moodleops.incident.csvinput import parse_renewals_option, parse_user_list, read_user_csv
from moodleops.incident.errors import IncidentError
from moodleops.incident.journal import DEFAULT_COPY_DIR, verify_file
from moodleops.incident.runbook import DEFAULT_CHUNK, Outcome, Runbook, Who
from moodleops.inventory import load_inventory
from moodleops.site import site_of

# The one table of the CLI; incidents use 0-4, 6 (damaged journal) and 7 (an
# incident left incomplete: `moodleops incident recover`).
EXIT = "exit status:\n" + exit_table_text() + "\n"

APPLY_NOTE = """\
Dry run by default: the command prints exactly what would change, object by
object, and changes nothing. Add --apply (or --yes) to do it. Applied actions
take the platform-wide lock (PostgreSQL advisory lock on Moodle's database),
write their intent to the journal <state_dir>/incidents/journal.jsonl on the
host (copied to --journal-copy) before any change, go through Moodle's own API
(events logged, caches purged, sessions ended) in chunks, each acknowledged in
the journal as it lands, and close the journal record at the end. An object
held by several open incidents stays so until the last of them is reinstated.
"""


def _runbook(args: argparse.Namespace) -> Runbook:
    inv = load_inventory(args.inventory)
    # "-": no operator copy here (the pyinfra deploy fetches the host journal itself).
    copy = None if str(args.journal_copy) == "-" else args.journal_copy
    site = site_of(inv)
    site.require_here()
    return Runbook(inv, site, journal_copy=copy, chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK))


def _users(args: argparse.Namespace) -> tuple[str, ...]:
    names: list[str] = []
    if args.users is not None:
        names += parse_user_list(args.users)
    if args.users_csv is not None:
        names += read_user_csv(args.users_csv)
    if args.users_from_alert:
        from moodleops.incident.alert_scope import alertmanager_url, users_of_alert
        url = args.alertmanager or alertmanager_url(load_inventory(args.inventory))
        names += users_of_alert(url, args.users_from_alert)
    return tuple(dict.fromkeys(names))


def _who(args: argparse.Namespace, *, reason: str | None = None, ticket: str | None = None) -> Who:
    reason = args.reason or reason
    ticket = args.ticket or ticket
    if not reason or not reason.strip():
        raise IncidentError("--reason is empty (say why, e.g. --reason 'phishing wave, ticket 4521')")
    if not ticket or not ticket.strip():
        raise IncidentError("--ticket is empty (give the ticket reference, e.g. --ticket SUP-4521)")
    return Who(reason=reason.strip(), ticket=ticket.strip(), operator=args.operator)


def _finish(outcome: Outcome) -> int:
    for line in outcome.render():
        print(line)
    return 1 if outcome.drift else 0


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors go to the CLI's one reporter; a bug also says where to see what was applied."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Exception as exc:
            if translate(exc) is None:
                exc.add_note("the journal says what was applied: `moodleops incident list`")
            raise
    return run


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _schools(args: argparse.Namespace, known: set[str]) -> tuple[str, ...]:
    codes = list(args.school or ())
    if args.school_from_alert:
        from moodleops.incident.alert_scope import alertmanager_url, schools_of_alert
        url = args.alertmanager or alertmanager_url(load_inventory(args.inventory))
        got, left_out = schools_of_alert(url, args.school_from_alert, known)
        if left_out:
            print(f"note: {args.school_from_alert} also fires for {', '.join(left_out)}: no school, left out",
                  file=sys.stderr)
        codes += got
    return tuple(dict.fromkeys(codes))


def cmd_suspend(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    who = _who(args)
    make = rb.suspend(schools=_schools(args, {s.code for s in rb.inv.schools}), users=_users(args),
                      platform=args.platform,
                      hide_category=args.hide_category, include_multi_school=args.include_multi_school,
                      message=args.message, revoke_tokens=args.revoke_tokens)
    return _finish(rb.run(make, apply=args.apply, who=who, progress=_progress))


def cmd_reinstate(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    incident = rb.journal.incident(args.incident_id)
    who = _who(args, reason=f"reinstate {args.incident_id}", ticket=incident.intent.get("ticket"))
    return _finish(rb.run(rb.reinstate(args.incident_id), apply=args.apply, who=who, force=args.force,
                          progress=_progress))


def cmd_messaging(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    who = _who(args)
    return _finish(rb.run(rb.messaging(_users(args), block=args.what == "suspend"), apply=args.apply, who=who,
                          progress=_progress))


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (expected YYYY-MM-DD)") from None


def cmd_expire(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    who = _who(args)
    files = parse_renewals_option(args.renewals or [], {s.code for s in rb.inv.schools})
    make = rb.expire(args.date, rb.read_renewals(files))
    return _finish(rb.run(make, apply=args.apply, who=who, progress=_progress))


def cmd_missing(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    files = parse_renewals_option(args.renewals or [], {s.code for s in rb.inv.schools})
    late, within = rb.missing_accounts(args.date, rb.read_renewals(files))
    sla = rb.inv.platform.accounts.new_account_sla_days
    print(f"accounts requested more than {sla} days before {args.date} and still missing in Moodle: {len(late)}")
    for m in late:
        print(f"  {m.school}  {m.username}  requested {m.requested} ({m.days} days)  [{m.source}]")
    if within:
        print(f"{within} more missing but requested within the last {sla} days")
    return 1 if late else 0


def cmd_list(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    incidents = rb.journal.incidents()
    if not incidents:
        print(f"no incident in {rb.journal.path}")
        return 0
    print(f"{'incident':28} {'at (UTC)':25} {'action':20} {'state':30} {'changed':>7} {'held':>5}  ticket / reason")
    for inc in incidents.values():
        r = inc.intent
        print(f"{inc.id:28} {r.get('at', ''):25} {inc.action:20} {inc.state:30} {inc.changed_count():>7} "
              f"{len(inc.pending()):>5}  {r.get('ticket', '')} / {r.get('reason', '')}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    incidents = rb.journal.incidents()
    inc = rb.journal.incident(args.incident_id)
    holds = rb.journal.holds(incidents)
    shared = {str(e.get("label") or e["id"]): sorted(i for i, _ in holds.of((e["kind"], int(e["id"])), besides=inc.id))
              for e in inc.pending()}
    doc = {"state": inc.state, "intent": inc.intent, "results": list(inc.results.values()), "close": inc.close,
           "recoveries": inc.recoveries, "reinstatements": [r.id for r in inc.reinstatements],
           "pending": inc.pending(), "also_held_by": {k: v for k, v in shared.items() if v}}
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    who = _who(args, reason="recover an interrupted incident", ticket="recover") if args.apply else None
    recoveries = rb.recover(apply=args.apply, undo=args.undo, who=who, progress=_progress)
    if not recoveries:
        print(f"no incomplete incident in {rb.journal.path}: nothing to recover")
        return 0
    for rec in recoveries:
        for line in rec.render():
            print(line)
    return 1 if any(r.drift for r in recoveries) else 0


def cmd_verify(args: argparse.Namespace) -> int:
    rb = _runbook(args)
    paths = [rb.journal.path] + ([rb.journal.copy_path] if rb.journal.copy_path else []) + list(args.files or [])
    reports = [verify_file(p) for p in paths]
    bad = False
    for rep in reports:
        if rep.problems and rep.problems[0].endswith("no such file"):
            if rep.path == rb.journal.path:
                print(f"{rep.path}: no journal yet (no incident was ever applied from this host)")
            elif rep.path == rb.journal.copy_path:
                print(f"{rep.path}: absent (no operator copy here)")
            else:
                print(f"{rep.path}: no such file")
                bad = True
            continue
        legacy = f", {rep.legacy} older record(s) written before the hash chain" if rep.legacy else ""
        state = "OK" if not rep.problems else f"{len(rep.problems)} PROBLEM(S)"
        print(f"{rep.path}: {rep.records} record(s){legacy}: {state}")
        for p in rep.problems:
            print(f"  {p}")
        bad = bad or bool(rep.problems)
    host = reports[0]
    for rep in reports[1:]:
        if not rep.hashes:
            continue
        common = min(len(host.hashes), len(rep.hashes))
        if host.hashes[:common] != rep.hashes[:common]:
            n = next(i for i in range(common) if host.hashes[i] != rep.hashes[i]) + 1
            print(f"  {rep.path} and the host journal differ from record {n} on: one of them was altered")
            bad = True
        elif len(rep.hashes) < len(host.hashes):
            print(f"  {rep.path} lacks the last {len(host.hashes) - len(rep.hashes)} record(s) of the host "
                  "journal (copy written elsewhere, or not reachable at the time)")
    if bad:
        print("moodleops: error: the journal chain is broken (see above): keep both files as evidence",
              file=sys.stderr)
        return 6
    return 0


def _common(p: argparse.ArgumentParser, *, applies: bool = True) -> None:
    p.add_argument("--journal-copy", metavar="DIR", type=Path, default=DEFAULT_COPY_DIR,
                   help="the operator's copy of the journal; - for none (default: %(default)s)")
    if applies:
        p.add_argument("--apply", "--yes", dest="apply", action="store_true",
                       help="do it (default: dry run, change nothing)")
        p.add_argument("--operator", metavar="NAME", help="who runs this, when not the OS user (journalled)")
        p.add_argument("--chunk-size", metavar="N", type=int, default=DEFAULT_CHUNK,
                       help="objects applied (and acknowledged in the journal) per chunk (default: %(default)s)")


def _users_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", metavar="A,B", help="usernames, comma-separated")
    p.add_argument("--users-csv", metavar="FILE", type=Path, help="CSV file with a username column")
    p.add_argument("--users-from-alert", metavar="ALERTNAME",
                   help="the users (username label) of that alert, active in Alertmanager")
    p.add_argument("--alertmanager", metavar="URL", help="Alertmanager for --users-from-alert and "
                   "--school-from-alert (default: the monitoring role's)")


def _why_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--reason", metavar="TEXT", required=required, help="why (journalled)")
    p.add_argument("--ticket", metavar="REF", required=required, help="ticket reference (journalled)")


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "incident", summary="suspend/reinstate schools, users or the platform; messaging; expiry",
        description="Incident runbooks (hosting agreement art. 6.2): suspend a school, a list of users or the "
                    "whole platform, and reinstate exactly the state from before; cut a user's messaging; "
                    "expire hosted accounts not renewed on 31 August.\n\n" + APPLY_NOTE,
        epilog="examples:\n"
               "  moodleops incident suspend --school ifsi_millau --hide-category --reason 'intrusion' "
               "--ticket SUP-1\n"
               "  moodleops incident suspend --school ifsi_millau --reason 'intrusion' --ticket SUP-1 --apply\n"
               "  moodleops incident list\n"
               "  moodleops incident reinstate INC-20261124-143012-ab12 --apply\n"
               "  moodleops incident messaging suspend --users abc1234d --reason spam --ticket SUP-2 --apply\n"
               "  moodleops incident expire --date 2026-08-31 --renewals ifsi_millau=millau.csv "
               "--reason 'yearly expiry' --ticket SUP-3\n\n" + EXIT)

    p = add_command(
        commands, "suspend", summary="suspend a school's users, a list of users, or the platform",
        description="Suspend accounts (their open sessions end at once) and optionally hide the school's "
                    "category; or put the whole platform in maintenance mode. School members come from "
                    "platform.yml school_membership (cohort, profile_field or category_enrolments). Users "
                    "also in another school are reported and left alone unless --include-multi-school. Site "
                    "administrators are never suspended. Accounts already suspended are left out of the "
                    "incident, so they stay suspended at reinstatement. Re-running changes nothing.\n\n"
                    + APPLY_NOTE,
        epilog="examples:\n"
               "  moodleops incident suspend --school ifms_lot --hide-category --reason 'phishing' --ticket SUP-7\n"
               "  moodleops incident suspend --users abc1234d,xyz9876q --reason 'leak' --ticket SUP-8 --apply\n"
               "  moodleops incident suspend --users-csv list.csv --reason 'breach' --ticket SUP-9 --apply\n"
               "  moodleops incident suspend --school-from-alert MoodleFailedLoginBurst --reason 'failed-login "
               "burst' --ticket SUP-11\n"
               "  moodleops incident suspend --platform --message 'Maintenance de sécurité' "
               "--reason 'flaw' --ticket SUP-10 --apply\n\n" + EXIT)
    p.add_argument("--school", metavar="CODE", action="append", help="a school code of schools.yml (repeatable)")
    p.add_argument("--school-from-alert", metavar="ALERTNAME",
                   help="the schools (school label) of that alert, active in Alertmanager "
                        "(e.g. MoodleFailedLoginBurst)")
    _users_options(p)
    p.add_argument("--platform", action="store_true", help="the whole platform: CLI maintenance mode")
    p.add_argument("--hide-category", action="store_true", help="also hide the school's course category")
    p.add_argument("--include-multi-school", action="store_true",
                   help="also suspend users who belong to another school too")
    p.add_argument("--message", metavar="TEXT", help="with --platform: the maintenance page message")
    p.add_argument("--revoke-tokens", action="store_true",
                   help="also revoke the suspended users' web-service tokens (IRREVERSIBLE: reinstatement "
                        "does not bring them back)")
    _why_options(p)
    _common(p)
    p.set_defaults(run=_guarded(cmd_suspend))

    p = add_command(
        commands, "reinstate", summary="undo an incident exactly",
        description="Put back every object the incident changed to its state from before. Objects changed "
                    "since the incident (an account edited by hand, a category shown again...) are drift: "
                    "reported and left as is unless --force. An incident already reinstated is refused.\n\n"
                    + APPLY_NOTE,
        epilog="examples:\n  moodleops incident reinstate INC-20261124-143012-ab12\n"
               "  moodleops incident reinstate INC-20261124-143012-ab12 --apply\n"
               "  moodleops incident reinstate INC-20261124-143012-ab12 --force --apply\n\n" + EXIT)
    p.add_argument("incident_id", metavar="INCIDENT_ID")
    p.add_argument("--force", action="store_true", help="also restore objects that drifted since")
    _why_options(p, required=False)
    _common(p)
    p.set_defaults(run=_guarded(cmd_reinstate))

    p = add_command(
        commands, "messaging", summary="suspend or reinstate users' messaging (spam)",
        description="suspend: assign the system role moodleops_nomessaging (created on first use; it "
                    "prohibits moodle/site:sendmessage, which Moodle checks in the system context) to the "
                    "users. reinstate: remove it. Reversible also with `incident reinstate ID`.\n\n"
                    + APPLY_NOTE,
        epilog="examples:\n  moodleops incident messaging suspend --users abc1234d --reason spam --ticket SUP-2\n"
               "  moodleops incident messaging reinstate --users abc1234d --reason fixed --ticket SUP-2 "
               "--apply\n\n" + EXIT)
    p.add_argument("what", choices=("suspend", "reinstate"))
    _users_options(p)
    _why_options(p)
    _common(p)
    p.set_defaults(run=_guarded(cmd_messaging))

    p = add_command(
        commands, "expire", summary="suspend hosted accounts not renewed (31 August)",
        description="On or after 31 August (platform.yml accounts.hosted_expiry), suspend the hosted accounts "
                    "(profile field accounts.account_type_field in accounts.hosted_types) of the schools "
                    "whose renewal lists are given, when they are not on their school's list. A renewal "
                    "counts when its requested date falls in the year ending on --date. Students are never "
                    "touched; schools without a list are left alone.\n\nRenewal CSV: header "
                    "username,requested[,account_type]; requested as YYYY-MM-DD.\n\n" + APPLY_NOTE,
        epilog="examples:\n  moodleops incident expire --date 2026-08-31 --renewals ifsi_millau=millau.csv "
               "ifms_lot=lot.csv --reason 'yearly expiry' --ticket SUP-3\n\n" + EXIT)
    p.add_argument("--date", type=_date, required=True, metavar="YYYY-MM-DD", help="the expiry run's date")
    p.add_argument("--renewals", metavar="SCHOOL=CSV", nargs="+", action="extend",
                   help="a school's renewal list (repeatable)")
    _why_options(p)
    _common(p)
    p.set_defaults(run=_guarded(cmd_expire))

    p = add_command(
        commands, "missing-accounts", summary="accounts requested more than the SLA ago and still missing",
        description="Read the schools' renewal/request lists and list usernames requested more than "
                    "accounts.new_account_sla_days (platform.yml) before --date that Moodle still lacks. "
                    "Read-only.",
        epilog="examples:\n  moodleops incident missing-accounts --renewals ifsi_millau=millau.csv\n\n"
               "exit status:\n  0  none missing beyond the SLA\n  1  some are (listed)\n  2  bad input\n")
    p.add_argument("--date", type=_date, default=date.today(), metavar="YYYY-MM-DD", help="as of (default: today)")
    p.add_argument("--renewals", metavar="SCHOOL=CSV", nargs="+", action="extend", help="a school's list")
    _common(p, applies=False)
    p.set_defaults(run=_guarded(cmd_missing))

    p = add_command(commands, "list", summary="incidents in the host journal",
                    description="One line per journalled action: id, time, action, state (open, reinstated, "
                                "partly-reinstated), objects changed, ticket and reason.",
                    epilog="examples:\n  moodleops incident list\n\nexit status:\n  0  listed\n")
    _common(p, applies=False)
    p.set_defaults(run=_guarded(cmd_list))

    p = add_command(commands, "show", summary="one incident's journal records, as JSON",
                    description="The incident's record (every object with its before/after state), its "
                                "reinstatements, and what is still pending.",
                    epilog="examples:\n  moodleops incident show INC-20261124-143012-ab12\n\n"
                           "exit status:\n  0  shown\n  2  unknown incident id\n")
    p.add_argument("incident_id", metavar="INCIDENT_ID")
    _common(p, applies=False)
    p.set_defaults(run=_guarded(cmd_show))

    p = add_command(
        commands, "recover", summary="resolve an interrupted incident: complete it or undo what was applied",
        description="An incident whose journal has an intent but no closing record was interrupted (killed, "
                    "SSH session lost, host crash). Every new incident is refused until it is resolved. "
                    "recover reads, for every object of the intent, what Moodle holds now, and shows what was "
                    "acknowledged, what was applied but not yet acknowledged, what was not applied and what "
                    "was changed by someone else since. --apply completes the incident (the objects left are "
                    "applied, the incident is then open as usual); --undo --apply puts back every object it "
                    "changed (revoked web-service tokens cannot come back).\n\n" + APPLY_NOTE,
        epilog="examples:\n  moodleops incident recover\n  moodleops incident recover --apply\n"
               "  moodleops incident recover --undo --apply\n\n" + EXIT)
    p.add_argument("--undo", action="store_true", help="undo what was applied instead of completing")
    _why_options(p, required=False)
    _common(p)
    p.set_defaults(run=_guarded(cmd_recover))

    p = add_command(
        commands, "verify", summary="check the journal's hash chain (host journal and operator's copy)",
        description="Each journal record carries the hash of the record before it and its own. verify "
                    "recomputes the chain of the host journal and of the operator's copy (--journal-copy) "
                    "and of any FILE given, and checks that they agree: an edited, removed or inserted "
                    "line is reported with its line number. Read-only.",
        epilog="examples:\n  moodleops incident verify\n"
               "  moodleops incident verify ~/.local/state/moodleops/incidents-production-web1.jsonl\n\n"
               "exit status:\n  0  intact\n  6  a chain is broken or the files disagree (listed)\n")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE", help="other journal copies to check")
    _common(p, applies=False)
    p.set_defaults(run=_guarded(cmd_verify))
