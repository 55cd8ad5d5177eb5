"""`moodleops backup`: platform backups to S3, restore, retention, and the
schools' end-of-agreement exports."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from moodleops.backup import (
    export_mail,
    job_host,
    manifest,
    markers,
    restore,
    retention,
    schedule_cli,
    sealing,
)
from moodleops.backup.config import BackupConfig, backup_config
from moodleops.backup.index import BlobIndex
from moodleops.backup.platform_backup import backup_lock, report_json, run_backup, work_dir
from moodleops.backup.progress import human_bytes
from moodleops.backup.s3 import BackupError, client, presigner
from moodleops.backup.school_export import (
    EXPORT_ID,
    ExportReport,
    MoodleCourses,
    export_school,
    export_status,
    prior_mailing,
    record_mailing,
    reminder_lines,
)
from moodleops.commands import add_area, add_command
from moodleops.errors import DependencyError, S3Error, SmtpError
from moodleops.faults import translate
from moodleops.inventory import School, load_inventory
from moodleops.platform.guard import PlatformHeld, platform_operation
from moodleops.platform.lock import PlatformLockBusy, PlatformLockError, platform_lock
from moodleops.site import site_of

EXIT = """\
exit status (the table of `moodleops --help`):
  0  done (or dry run shown)
  1  done with problems (failed courses, pending schools in the reminder window)
  2  bad input or inventory: nothing changed (one line on stderr naming the bad value)
  3  another backup, prune or restore holds the lock: nothing changed
  4  S3, the database, Moodle or the SMTP relay failed: one line names it, where,
     what to check and what was already done (`backup run` and `export` resume
     on a re-run; an export whose mail failed is mailed by a re-run with --mail,
     without uploading again)
  5  a local filesystem refused (the state directory full, read-only, not writable)
  6  the restore or export stopped on its own check (a corrupted object is named)
"""

CREDENTIALS = """\
S3 credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role), never from the
inventory. Bucket, region, prefix, retention and the endpoint (empty: AWS;
MOODLEOPS_BACKUP_S3_ENDPOINT_URL overrides) are backup_* variables of the
inventory's group_vars. Every object is stored with server-side encryption.
"""


def _err(msg: str) -> int:
    print(f"moodleops: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


def _ctx(env: str) -> tuple[Any, Any, Any, Any]:
    inv = load_inventory(env)
    cfg = backup_config(inv)
    return inv, site_of(inv), cfg, client(cfg)


def _s3_address(args: argparse.Namespace) -> dict[type[DependencyError], str]:
    """Where the bucket is, for the fault line (botocore's errors do not say)."""
    try:
        cfg = backup_config(load_inventory(args.inventory))
    except Exception:  # noqa: BLE001 - the inventory's own error was the one reported
        return {}
    return {S3Error: f"s3://{cfg.bucket}/{cfg.prefix} at {cfg.endpoint_url or 'AWS'} ({cfg.region})"}


def _run_state(args: argparse.Namespace) -> str:
    """What an interrupted `backup run` left, in words, from its work directory."""
    try:
        wd = work_dir(site_of(load_inventory(args.inventory)))
        state = json.loads((wd / "run.json").read_text())
    except (OSError, ValueError, KeyError):
        return "nothing was uploaded and no dump is kept: a re-run starts over"
    rd = wd / "runs" / state["id"]
    if state.get("blobs_uploaded"):
        done = "database dump and filedir blobs uploaded, moodledata folders and manifest not written"
    elif state.get("dump_uploaded"):
        done = "database dump uploaded, blobs not finished (those sent are kept)"
    else:
        try:
            up = json.loads((rd / "dump-upload.json").read_text())
            sent = f"{len(up.get('checksums', {}))} of {-(-int(up['size']) // int(up['part_size']))} parts uploaded"
        except (OSError, ValueError, KeyError, ZeroDivisionError):
            sent = "upload not started"
        done = f"database dump taken ({sent}), blobs not started"
    return f"backup {state['id']}: {done}; the manifest is written last, so no partial backup is listed: " \
           "`moodleops backup run` resumes (--fresh starts over)"


# What a re-run does after a fault, for the commands that change something.
_RERUN = {
    "cmd_export": "courses already uploaded stay in the bucket: a re-run skips them",
    "cmd_prune": "a re-run plans again from what is left in the bucket (kept backups are never deleted)",
}


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except Exception as exc:
            err = translate(exc, _s3_address(args))
            if err is None:
                raise
            if isinstance(err, DependencyError) and not err.done:
                if fn is cmd_run_unguarded:
                    err.done = _run_state(args)
                else:
                    err.done = _RERUN.get(fn.__name__)
            raise err from exc
    return run


def _elsewhere(args: argparse.Namespace, command: str, *words: str) -> int | None:
    """The command's exit status on the job host when Moodle is not on this
    machine (job_host.py); None: run it here."""
    inv = load_inventory(args.inventory)
    if site_of(inv).moodle_here:
        return None
    return job_host.run_there(inv, command, *words)


def _format(args: argparse.Namespace) -> list[str]:
    return ["--format", args.format]


def cmd_run_unguarded(args: argparse.Namespace) -> int:
    there = _elsewhere(args, "run", *(["--fresh"] if args.fresh else []), *_format(args))
    if there is not None:
        return there
    inv, site, cfg, s3 = _ctx(args.inventory)
    site.require_here()     # the dump is taken from here and moodledata read from here
    try:
        # The one platform lock: a backup never overlaps an upgrade, a restore or an incident.
        with platform_lock(site, "backup run"), backup_lock(site):
            rep = run_backup(s3, cfg, inv, site, fresh=args.fresh)
    except (PlatformLockBusy, PlatformLockError) as exc:
        print(f"moodleops: backup failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 3
    if args.format == "json":
        print(json.dumps(report_json(rep), default=str))
    else:
        print("\n".join(rep.lines()))
    return 1 if rep.blobs.corrupt or rep.missing else 0


cmd_run = _guard(cmd_run_unguarded)


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    there = _elsewhere(args, "list", *_format(args))
    if there is not None:
        return there
    _inv, _site, cfg, s3 = _ctx(args.inventory)
    ids = manifest.list_ids(s3, cfg)
    keep = retention.kept_ids(ids, cfg.retention) if ids else set()
    rows = []
    for bid in reversed(ids):
        m = manifest.get(s3, cfg, manifest.manifest_key(cfg, bid))
        rows.append({"id": bid, "key": manifest.manifest_key(cfg, bid), "kept": bid in keep,
                     "release": m["moodle"]["release"], "db_bytes": m["database"]["size"],
                     "blobs": m["blobs"]["count"], "blob_bytes": m["blobs"]["bytes"]})
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    print(f"s3://{cfg.bucket}/{cfg.prefix} ({cfg.region}): {len(rows)} backup(s), retention "
          f"{cfg.retention.daily} daily / {cfg.retention.weekly} weekly / {cfg.retention.monthly} monthly")
    for r in rows:
        print(f"  {r['id']}  {'keep ' if r['kept'] else 'prune'}  db {human_bytes(r['db_bytes']):>10}  "
              f"{r['blobs']} blobs {human_bytes(r['blob_bytes']):>10}  {r['release']}")
    return 0


@_guard
def cmd_prune(args: argparse.Namespace) -> int:
    if args.grace_hours < 0:
        return _err(f"--grace-hours {args.grace_hours} is not valid (allowed: 0 or more)")
    # The job host's bucket index is the one a prune must update.
    there = _elsewhere(args, "prune", "--grace-hours", str(args.grace_hours), *(["--confirm"] if args.confirm else []))
    if there is not None:
        return there
    _inv, site, cfg, s3 = _ctx(args.inventory)
    with backup_lock(site):
        p = retention.plan(s3, cfg, grace=timedelta(hours=args.grace_hours))
        if p.in_progress:
            print(f"backup(s) in progress elsewhere: {', '.join(p.in_progress)}: no blob, dump or archive is "
                  "deleted this time (only manifests not kept)")
        if p.stale_markers:
            print(f"note: in-progress markers older than {markers.INPROGRESS_MAX_AGE} ignored (killed runs; the "
                  f"next `backup run` resumes them): {', '.join(p.stale_markers)}")
        print(f"keep {len(p.keep)} backup(s): {', '.join(p.keep) or '-'}")
        print(f"drop {len(p.drop)} backup(s): {', '.join(p.drop) or '-'}")
        print(f"delete {len(p.keys)} manifest/dump/archive object(s) and {len(p.blobs)} blob(s) "
              f"({human_bytes(p.blob_bytes)}); {p.blobs_kept} blob(s) kept")
        if not args.confirm:
            print("dry run: nothing deleted (add --confirm to delete)")
            return 0
        started, deleted = retention.apply(s3, cfg, p)
        # This host's bucket index learns what went, so its next backup need not list the bucket.
        idx = BlobIndex.for_bucket(site.state_dir, cfg)
        try:
            idx.forget(deleted)
            idx.set_meta("prune_applied", started.isoformat())
        finally:
            idx.close()
        print("deleted")
    return 0


@_guard
def cmd_restore(args: argparse.Namespace) -> int:
    target_inv = load_inventory(args.target_inventory)
    target = site_of(target_inv)
    if not target.moodle_here:
        return _restore_elsewhere(args, target_inv)
    _inv, _site, cfg, s3 = _ctx(args.inventory)
    target.require_here()   # moodledata is restored here, and Moodle's CLI run here
    try:
        key = manifest.resolve_key(cfg, args.manifest)
    except BackupError as exc:
        return _err(str(exc))
    p = restore.plan(s3, cfg, key, target_inv, target, allow_plugin_differences=args.allow_plugin_differences)
    for diff in p.plugin_differences:
        print(f"WARNING: plugin version differs (allowed by --allow-plugin-differences): {diff}")
    print(f"restore {key} (backup of {p.manifest['env']}, {p.manifest['site']['wwwroot']}) onto "
          f"'{target_inv.env}' {target.wwwroot}, database {target.db_name}, {target.dataroot}:")
    for i, step in enumerate(p.steps, 1):
        print(f"  {i}. {step}")
    if not args.confirm:
        print("dry run: nothing changed (add --confirm to replace the target's data)")
        return 0
    try:
        with platform_operation(target, target_inv.env, f"backup restore {key}"), backup_lock(target):
            rep = restore.apply(s3, cfg, p, target_inv)
    except (PlatformHeld, PlatformLockBusy, PlatformLockError) as exc:
        return _err(str(exc))
    print("\n".join(rep.lines()))
    print(f"Moodle serves the restored data at {target.wwwroot}")
    return 0


def _restore_elsewhere(args: argparse.Namespace, target_inv: Any) -> int:
    """A restore onto a platform whose Moodle is elsewhere runs on its job host,
    from its own bucket: only onto the platform of --inventory."""
    if target_inv.env_dir != load_inventory(args.inventory).env_dir:
        return _err(f"--target-inventory {args.target_inventory}: its Moodle is not on this machine, and a "
                    f"restore from another platform's bucket ({args.inventory}) cannot run on its job host "
                    "from here: run it on one of its web nodes")
    return job_host.run_there(target_inv, "restore", "--manifest", args.manifest,
                              *(["--confirm"] if args.confirm else []),
                              *(["--allow-plugin-differences"] if args.allow_plugin_differences else []),
                              onto_itself=True)


@_guard
def cmd_keygen(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    site = site_of(inv)
    if args.out:
        out = Path(args.out)
    elif site.secrets_dir is not None:
        out = site.secrets_dir / sealing.KEY_NAME
    else:
        return _err("--out is required: this inventory has no local secrets directory (production keys "
                    "go to the vault; MOODLEOPS_BACKUP_MANIFEST_KEY gives it to the backup commands)")
    kid = sealing.write_new_key(out)
    print(f"new manifest key {kid} written to {out} (mode 0600). Keep a copy in the vault: the secrets of every "
          "backup sealed with it are unreadable without it.")
    return 0


@_guard
def cmd_export(args: argparse.Namespace) -> int:
    if not EXPORT_ID.match(args.export_id):
        return _err(f"--export-id {args.export_id!r} is not valid (allowed: [a-z0-9-], up to 63 characters)")
    if args.link_hours is not None and args.link_hours < 1:
        return _err(f"--link-hours {args.link_hours} is not valid (allowed: 1 or more; links live at most 168 h)")
    if args.dry_run and (args.mail or args.mail_again):
        return _err("--dry-run and --mail together: a dry run mails nothing (drop one)")
    inv, site, cfg, s3 = _ctx(args.inventory)
    site.require_here()
    codes = [s.code for s in inv.schools]
    for code in args.school:
        if code not in codes:
            return _err(f"--school {code!r} is not valid (allowed: {', '.join(codes)})")
    source = MoodleCourses(site)
    signer = None if args.dry_run else presigner(cfg)
    status = 0
    reports: list[ExportReport] = []
    for code in args.school:
        rep = export_school(s3, cfg, inv, inv.school(code), args.export_id, source=source, state_dir=site.state_dir,
                            signer=signer, link_hours=args.link_hours, dry_run=args.dry_run)
        reports.append(rep)
        status = max(status, 0 if rep.complete else 1)
        if args.format == "text":
            print("\n".join(rep.lines()))
    try:
        for rep in reports:
            _mail(args, cfg, inv.school(rep.school), rep, site.state_dir, reports)
    finally:
        if args.format == "json":
            print(json.dumps([r.as_json() for r in reports], default=str))
    return status


def _mail(args: argparse.Namespace, cfg: BackupConfig, school: School, rep: ExportReport, state_dir: Path,
          reports: list[ExportReport]) -> None:
    say = print if args.format == "text" else (lambda *_a, **_k: None)
    relay = f"{cfg.smtp_host}:{cfg.smtp_port}"
    if rep.dry_run:
        say(f"  would mail the links to {', '.join(school.referents)} via {relay} with --mail")
        return
    if not (args.mail or args.mail_again):
        say(f"  links not mailed: add --mail to send them to {', '.join(school.referents)} (via {relay})")
        return
    if not rep.complete:
        say(f"  not mailed: {len(rep.failed)} course(s) failed; a re-run with --mail finishes and mails them")
        return
    prior = None if args.mail_again else prior_mailing(state_dir, school, rep, rep.generated)
    if prior is not None:
        # A re-run (after a later school's failure, or by hand) must not flood the referents.
        rep.mailed_to = list(prior["to"])
        say(f"  already mailed to {', '.join(prior['to'])} at {prior['at']} (those links work until "
            f"{prior['links_expire']}); --mail-again sends these new links")
        return
    try:
        to = export_mail.send(cfg, export_mail.compose(cfg, school, rep))
    except SmtpError as exc:
        exc.done = _export_done(reports, rep)
        raise
    record_mailing(state_dir, school, rep, to, rep.generated)
    rep.mailed_to = to
    say(f"  mailed the links to {', '.join(to)} via {relay}")


def _export_done(reports: list[ExportReport], failed_at: ExportReport) -> str:
    """What was done when a mail failed: the uploads are kept, a re-run mails them."""
    done = "; ".join(f"{r.school}: {len(r.already) + len(r.exported)} course(s) uploaded"
                     + (f", mailed to {', '.join(r.mailed_to)}" if r.mailed_to else "")
                     + ("" if r.complete else f", {len(r.failed)} failed") for r in reports)
    unmailed = [r.school for r in reports[reports.index(failed_at):]]
    again = " ".join(f"--school {code}" for code in unmailed)
    return (f"done: {done} (manifests written); links NOT mailed for {', '.join(unmailed)}: "
            f"`moodleops backup export {again} --mail` (same --export-id) mails them without uploading again")


@_guard
def cmd_export_status(args: argparse.Namespace) -> int:
    inv, _site, cfg, s3 = _ctx(args.inventory)
    try:
        today = date.fromisoformat(args.as_of) if args.as_of else date.today()
    except ValueError:
        return _err(f"--as-of {args.as_of!r} is not valid (allowed: a date YYYY-MM-DD)")
    statuses = export_status(s3, cfg, inv)
    lines, due = reminder_lines(statuses, cfg, inv.platform.agreement_end, today)
    if args.format == "json":
        print(json.dumps({"due": due, "schools": [s.__dict__ for s in statuses]}))
    else:
        print("\n".join(lines))
    return 1 if due else 0


def _fmt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text", help="report format (default: text)")


def register(areas: argparse._SubParsersAction) -> None:
    commands = add_area(
        areas, "backup", summary="platform backups to S3, verified restores, schools' end-of-agreement exports",
        description="Platform backups to S3-compatible object storage: the PostgreSQL dump (multipart, "
                    "resumable), moodledata/filedir as content-addressed blobs (only new ones are sent), the "
                    "other moodledata folders, and a manifest per run; restores from a manifest; retention; "
                    "and each school's end-of-agreement export through Moodle's course backup.\n\n" + CREDENTIALS,
        epilog="examples:\n  moodleops backup run\n  moodleops backup list\n  moodleops backup prune --confirm\n"
               "  moodleops backup restore --manifest 20290101T020000Z --target-inventory local --confirm\n"
               "  moodleops backup export --school ifsi_millau\n  moodleops backup export-status\n\n" + EXIT)

    p = add_command(commands, "run", summary="back the platform up now (resumes an interrupted run)",
                    description="Dump the database (pg_dump -Fc, one consistent snapshot), upload it in parts "
                                "(an interrupted upload resumes on the next run: ListParts), upload the filedir "
                                "blobs the bucket lacks (key blobs/<sha1>, sha1 re-read before sending, "
                                "SHA-256 checked by S3), archive the other moodledata folders (not cache, "
                                "localcache, temp, sessions, trashdir), then write the manifest. Progress goes "
                                "to stderr; the report gives sizes, durations and blobs skipped.",
                    epilog="examples:\n  moodleops backup run\n  moodleops --inventory production backup run "
                           "--format json\n\n" + EXIT)
    p.add_argument("--fresh", action="store_true", help="discard an interrupted run instead of resuming it")
    _fmt(p)
    p.set_defaults(run=cmd_run)

    p = add_command(commands, "list", summary="backups in the bucket and what retention keeps",
                    description="Every manifest in the bucket, newest first, with what the retention of the "
                                "inventory (backup_retention) keeps or would prune.",
                    epilog="examples:\n  moodleops backup list\n\n" + EXIT)
    _fmt(p)
    p.set_defaults(run=cmd_list)

    p = add_command(commands, "prune", summary="apply retention (dry run by default)",
                    description="Delete the backups retention does not keep (newest per day, ISO week and month, "
                                "as many as backup_retention says; the newest always), their dump and archive, "
                                "and the blobs no kept manifest needs. Objects younger than --grace-hours are "
                                "never deleted (a run in progress writes its manifest last).",
                    epilog="examples:\n  moodleops backup prune\n  moodleops backup prune --confirm\n\n" + EXIT)
    p.add_argument("--confirm", action="store_true", help="really delete (default: dry run)")
    p.add_argument("--grace-hours", type=int, default=48, help="keep objects younger than this (default: 48)")
    p.set_defaults(run=cmd_prune)

    p = add_command(commands, "restore", summary="restore the platform from a manifest (dry run by default)",
                    description="Restore a backup onto the Moodle of --target-inventory: everything is verified "
                                "first (dump and archive sha256, each blob's sha1: a corrupted object stops the "
                                "restore and is named), then maintenance on, the database replaced, moodledata "
                                "folders replaced, caches purged, maintenance off. The target must run the "
                                "same Moodle version and, unless --allow-plugin-differences, the same plugin "
                                "versions as the backup. Its config.php is left as is; the backup's copy (sealed "
                                "in the manifest, decrypted with the backup_manifest_key secret) is written "
                                "beside the target's state, mode 0600, for a rebuild by hand.",
                    epilog="examples:\n  moodleops backup restore --manifest 20290101T020000Z --target-inventory local\n"
                           "  moodleops backup restore --manifest 20290101T020000Z --target-inventory local "
                           "--confirm\n\n" + EXIT)
    p.add_argument("--manifest", required=True, metavar="ID|KEY", help="backup id or manifest key (see list)")
    p.add_argument("--target-inventory", required=True, metavar="ENV", help="inventory of the Moodle to overwrite")
    p.add_argument("--confirm", action="store_true", help="really replace the target's data (default: dry run)")
    p.add_argument("--allow-plugin-differences", action="store_true",
                   help="restore even if the target pins other plugin versions than the backup had")
    p.set_defaults(run=cmd_restore)

    p = add_command(commands, "keygen", summary="make the key that seals the manifests' secrets",
                    description="Write a new Fernet key (the backup_manifest_key secret) to --out, or to the "
                                "inventory's local secrets directory, mode 0600; an existing key is never "
                                "replaced. Backups seal config.php (the database password) with it before "
                                "upload; restores need it. Keep a copy in the vault, never in the bucket.",
                    epilog="examples:\n  moodleops backup keygen\n  moodleops backup keygen --out "
                           "/root/backup_manifest_key\n\n" + EXIT)
    p.add_argument("--out", metavar="FILE", help="where to write the key (default: <secrets dir>/backup_manifest_key)")
    p.set_defaults(run=cmd_keygen)

    p = add_command(commands, "export", summary="a school's end-of-agreement export (resumable)",
                    description="Back up every course below the school's category through Moodle (.mbz, with "
                                "user data if backup_export_user_data says so for the school), upload them under "
                                "exports/<school>/<export id>/ with manifest.json and SHA256SUMS, and print "
                                "pre-signed links for the referents, and with --mail mail them to the school's "
                                "referents (schools.yml) through backup_export_smtp_host/port. Courses above "
                                "backup_export_multipart_threshold_mb go up in parts. Links live "
                                "backup_export_link_expiry_hours (or --link-hours), shortened (and said so) "
                                "to S3's 7 days and to the expiry of the session credentials that sign them. "
                                "A rerun skips the courses already in the bucket with today's user-data "
                                "setting, redoes those exported with the other one, and resumes an "
                                "interrupted upload.",
                    epilog="examples:\n  moodleops backup export --school ifsi_millau --dry-run\n"
                           "  moodleops backup export --school ifsi_millau --mail\n"
                           "  moodleops backup export --school ifms_lot --school ifms_albi --export-id final-2029\n\n"
                           + EXIT)
    p.add_argument("--school", action="append", required=True, metavar="CODE", help="school code (repeatable)")
    p.add_argument("--export-id", default="end-of-agreement", help="export name (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="say which courses would be exported, redone or skipped; back up, upload and mail nothing")
    p.add_argument("--mail", action="store_true",
                   help="mail the links to the school's referents once its export is complete (default: print only)")
    p.add_argument("--mail-again", action="store_true",
                   help="mail the new links even if this export's earlier links were mailed and still work "
                        "(--mail skips that school and says so)")
    p.add_argument("--link-hours", type=int, metavar="N",
                   help="ask links valid N hours (default: backup_export_link_expiry_hours)")
    _fmt(p)
    p.set_defaults(run=cmd_export)

    p = add_command(commands, "export-status", summary="reminder report: schools that have not exported yet",
                    description="For each school, whether a complete export exists, with the days left before "
                                "the agreement end (platform.yml) and the reminder stage "
                                "(backup_export_reminder_days). Exit 1 when schools are pending inside the "
                                "reminder window: run it from cron and mail the output.",
                    epilog="examples:\n  moodleops backup export-status\n  moodleops backup export-status "
                           "--as-of 2029-06-01\n\n" + EXIT)
    p.add_argument("--as-of", metavar="DATE", help="report as of this date (default: today)")
    _fmt(p)
    p.set_defaults(run=cmd_export_status)

    # The scheduled jobs (systemd timers, the supervised scheduler): moodleops.backup.schedule_cli.
    schedule_cli.register(commands)
