"""A school's end-of-agreement export: every course below its category backed
up through Moodle (.mbz, with or without user data as the inventory decides),
uploaded under exports/<school>/<export id>/ (in parts above
backup_export_multipart_threshold_mb), with manifest.json and SHA256SUMS,
shared with its referents through pre-signed links.

Each finished course is one object in the bucket whose metadata says whether
it holds user data: a rerun skips the courses whose object matches today's
setting and redoes the others. What a course is doing (backing up, backed up,
uploaded) is written to a journal in the state directory before each step, so
a killed run resumes the upload of a file Moodle already made."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from moodleops.backup.config import BackupConfig
from moodleops.backup.multipart import upload_file
from moodleops.backup.progress import human_bytes, human_seconds
from moodleops.backup.s3 import Presigner, ensure_bucket, get_bytes, list_keys, put_bytes
from moodleops.errors import BusyError, S3Error
from moodleops.inventory import Inventory, School
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.site import Site

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXPORT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: SigV4 pre-signed URLs are valid for at most 7 days.
S3_MAX_LINK_SECONDS = 7 * 24 * 3600


def prefix(cfg: BackupConfig, school: School, export_id: str) -> str:
    return cfg.key("exports", school.code, export_id, "")


def course_key(cfg: BackupConfig, school: School, export_id: str, course: dict[str, Any]) -> str:
    name = _SAFE.sub("_", str(course["shortname"]))[:80]
    return f"{prefix(cfg, school, export_id)}courses/{course['id']}-{name}.mbz"


def _with(users: bool | None) -> str:
    return "unknown" if users is None else ("with user data" if users else "without user data")


class CourseSource(Protocol):
    """Where the courses and their .mbz files come from: Moodle (MoodleCourses)."""

    def list_courses(self, category_idnumber: str) -> dict[str, Any]: ...

    def backup_course(self, course_id: int, users: bool, destination: Path) -> Path: ...

    def work_dir(self, school: School, export_id: str) -> Path: ...


class MoodleCourses:
    """Moodle's own backup_controller, through moodleops/php/school_export.php."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.moodle = MoodleCLI(site)

    def list_courses(self, category_idnumber: str) -> dict[str, Any]:
        out: dict[str, Any] = self.moodle.tool("school_export", payload={"mode": "list",
                                                                         "category_idnumber": category_idnumber})
        return out

    def backup_course(self, course_id: int, users: bool, destination: Path) -> Path:
        out = self.moodle.tool("school_export", payload={"mode": "backup", "courseid": course_id, "users": users,
                                                         "destination": str(destination)}, timeout=3600)
        return Path(out["file"])

    def work_dir(self, school: School, export_id: str) -> Path:
        """Where Moodle (the web user) writes the .mbz files: its own temp area in
        moodledata (big enough, writable by it, swept by Moodle after a week)."""
        pw = pwd.getpwnam(self.site.web_user)
        d = self.site.dataroot / "temp"
        for part in ("moodleops-export", school.code, export_id):
            d = d / part
            d.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(d, 0o2770)
        return d


class Journal:
    """<state>/backup/exports/<school>/<export id>/journal.json: per course, the
    step it is at and the user-data setting it is done with; the mailings.
    Written (atomically, synced) before each step it announces."""

    def __init__(self, state_dir: Path, school: School, export_id: str) -> None:
        self.dir = state_dir / "backup" / "exports" / school.code / export_id
        self.path = self.dir / "journal.json"
        self.data: dict[str, Any] = {"courses": {}, "mailed": []}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def course(self, course_id: int) -> dict[str, Any]:
        return dict(self.data["courses"].get(str(course_id), {}))

    def set_course(self, course_id: int, **values: Any) -> None:
        self.data["courses"][str(course_id)] = values
        self.save()

    def add_mailing(self, entry: dict[str, Any]) -> None:
        self.data["mailed"].append(entry)
        self.save()

    def upload_state(self, course_id: int) -> Path:
        return self.dir / f"{course_id}.upload.json"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class LinkLifetime:
    seconds: int
    expires: datetime
    note: str        # why it is shorter than asked, or ""


def link_lifetime(requested_seconds: int, now: datetime, credentials_expire: datetime | None,
                  session_credentials: bool) -> LinkLifetime:
    """min(asked, the signing credentials' expiry when known, S3's 7 days): a link
    never outlives what signed it."""
    seconds, why = requested_seconds, ""
    if seconds > S3_MAX_LINK_SECONDS:
        seconds, why = S3_MAX_LINK_SECONDS, "S3 signs links for at most 7 days"
    if credentials_expire is not None:
        left = int((credentials_expire - now).total_seconds())
        if left <= 60:
            raise S3Error("", f"the credentials that sign the links expire at "
                              f"{credentials_expire.isoformat(timespec='minutes')}, before a link could be used",
                          "renew the session credentials (AWS_SESSION_TOKEN, the role), then re-run: "
                          "uploaded courses are kept")
        if left < seconds:
            seconds, why = left, (f"the session credentials that sign them expire at "
                                  f"{credentials_expire.astimezone(UTC).isoformat(timespec='minutes')}")
    note = ""
    if seconds < requested_seconds:
        note = (f"links SHORTENED to {human_seconds(seconds)} (asked {requested_seconds // 3600} h): {why}; "
                "re-run the export later for new links")
    elif session_credentials and credentials_expire is None:
        note = ("links signed with session credentials whose expiry is not known here: they stop working "
                "when those credentials expire, possibly before the time given")
    return LinkLifetime(seconds=seconds, expires=now + timedelta(seconds=seconds), note=note)


@dataclass
class ExportReport:
    school: str
    export_id: str
    user_data: bool
    exported: list[dict[str, Any]] = field(default_factory=list)     # this run
    already: list[dict[str, Any]] = field(default_factory=list)      # finished by an earlier run
    failed: list[dict[str, Any]] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)              # key -> pre-signed URL
    links_expire: str = ""
    links_seconds: int = 0
    links_note: str = ""
    manifest_key: str = ""
    seconds: float = 0.0
    dry_run: bool = False
    generated: datetime = field(default_factory=lambda: datetime.now(UTC))
    mailed_to: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def redone(self) -> int:
        return sum(1 for c in self.exported if c.get("redo"))

    def lines(self) -> list[str]:
        verb = "to export" if self.dry_run else "exported now"
        out = [(f"school {self.school}, export {self.export_id} ({_with(self.user_data)}): "
               f"{len(self.exported)} course(s) {verb} ({self.redone} redone: user data changed), "
               f"{len(self.already)} already done, {len(self.failed)} failed, in {human_seconds(self.seconds)}")]
        for c in self.exported:
            how = f"  {human_bytes(c['size'])} {c['upload']}" if "size" in c else ""
            redo = f"  (redone: {c['redo']})" if c.get("redo") else ""
            resumed = "  (resumed: Moodle's file was already made)" if c.get("resumed") else ""
            out.append(f"  {'export' if self.dry_run else 'exported'}  {c['id']:>6} {c['shortname']}{how}{redo}{resumed}")
        for c in self.already:
            out.append(f"  done      {c['id']:>6} {c['shortname']}")
        for c in self.failed:
            out.append(f"  FAILED    {c['id']:>6} {c['shortname']}: {c['error']}")
        if self.dry_run:
            out.append("  dry run: nothing backed up, uploaded or mailed")
            return out
        out.append(f"  manifest: {self.manifest_key}")
        if self.links:
            out.append(f"  links for the referents (expire {self.links_expire} UTC):")
            out += [f"    {k.rsplit('/', 1)[-1]}: {u}" for k, u in self.links.items()]
        if self.links_note:
            out.append(f"  NOTE: {self.links_note}")
        return out

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["generated"] = self.generated.isoformat()
        d["complete"], d["redone"] = self.complete, self.redone
        return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("file", "resumed")}


def export_school(s3: Any, cfg: BackupConfig, inv: Inventory, school: School, export_id: str, *,
                  source: CourseSource, state_dir: Path, signer: Presigner | None = None,
                  link_hours: int | None = None, dry_run: bool = False, now: datetime | None = None,
                  on_part: Any = None) -> ExportReport:
    """Export one school's courses (see the module's doc). Two runs of the same
    export never interleave on its journal: the second is refused (BusyError)."""
    with _exclusive(Journal(state_dir, school, export_id).dir, dry_run):
        return _export_school(s3, cfg, inv, school, export_id, source=source, state_dir=state_dir,
                              signer=signer, link_hours=link_hours, dry_run=dry_run, now=now, on_part=on_part)


@contextmanager
def _exclusive(directory: Path, dry_run: bool) -> Iterator[None]:
    if dry_run:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"this export is already running on this host (lock {directory / '.lock'}): "
                            "wait for it to end, then re-run to resume") from None
        yield


def _export_school(s3: Any, cfg: BackupConfig, inv: Inventory, school: School, export_id: str, *,
                   source: CourseSource, state_dir: Path, signer: Presigner | None,
                   link_hours: int | None, dry_run: bool, now: datetime | None,
                   on_part: Any) -> ExportReport:
    started = time.monotonic()
    ensure_bucket(s3, cfg)
    users = cfg.user_data_for(school.code)
    want = "yes" if users else "no"
    rep = ExportReport(school=school.code, export_id=export_id, user_data=users, dry_run=dry_run)
    listing = source.list_courses(school.category_idnumber)
    pre = prefix(cfg, school, export_id)
    present = list_keys(s3, cfg, pre + "courses/")
    journal = Journal(state_dir, school, export_id)
    work = None if dry_run else source.work_dir(school, export_id)
    total = len(listing["courses"])
    for i, course in enumerate(listing["courses"], 1):
        key = course_key(cfg, school, export_id, course)
        entry: dict[str, Any] = {"id": course["id"], "shortname": course["shortname"], "fullname": course["fullname"],
                                 "category": course["category"], "key": key, "user_data": users}
        if key in present:
            head = s3.head_object(Bucket=cfg.bucket, Key=key)
            meta = head.get("Metadata", {})
            had = meta.get("user-data")
            if had == want:
                entry.update(size=head["ContentLength"], sha256=meta.get("sha256", ""))
                rep.already.append(entry)
                continue
            entry["redo"] = (f"the bucket's copy is {_with({'yes': True, 'no': False}.get(str(had)))}, "
                             f"the inventory now says {_with(users)}")
        if dry_run:
            rep.exported.append(entry)
            continue
        assert work is not None
        try:
            path = _made_file(journal, course["id"], users)
            if path is not None:
                entry["resumed"] = True
            else:
                print(f"  [{i}/{total}] backing up course {course['id']} {course['shortname']} through Moodle "
                      f"({_with(users)}) ...", file=sys.stderr, flush=True)
                journal.set_course(course["id"], step="backing-up", user_data=users, key=key)
                path = source.backup_course(course["id"], users, work)
                journal.set_course(course["id"], step="backed-up", user_data=users, key=key, file=str(path),
                                   size=path.stat().st_size, sha256=_sha256(path))
            data_sha = journal.course(course["id"])["sha256"]
            size = path.stat().st_size
            meta = {"sha256": data_sha, "courseid": str(course["id"]), "user-data": want}
            if size > cfg.export_multipart_threshold:
                up = upload_file(s3, cfg, path, key, journal.upload_state(course["id"]), metadata=meta,
                                 progress_label=f"course {course['id']}", on_part=on_part)
                if up.sha256 != data_sha:
                    raise OSError(f"{path} changed while it was uploaded (sha256 {up.sha256}, Moodle's {data_sha})")
                entry["upload"] = f"multipart, {up.parts} part(s)" + (f", {up.parts_resumed} resumed"
                                                                     if up.parts_resumed else "")
            else:
                with open(path, "rb") as fh:
                    # One PUT (at most 5 GiB); the checksum makes S3 reject a damaged upload.
                    s3.put_object(Bucket=cfg.bucket, Key=key, Body=fh, ServerSideEncryption=cfg.sse,
                                  ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(data_sha), Metadata=meta)
                entry["upload"] = "single PUT"
            entry.update(size=size, sha256=data_sha)
            journal.set_course(course["id"], step="uploaded", user_data=users, key=key, size=size, sha256=data_sha)
            path.unlink()
            rep.exported.append(entry)
        except (MoodleError, OSError, KeyError) as exc:
            entry["error"] = " ".join(str(exc).split())[-300:]   # the end says what failed
            rep.failed.append(entry)
    rep.seconds = time.monotonic() - started
    if dry_run:
        return rep
    done = [_public(c) for c in rep.already + rep.exported]
    when = now or datetime.now(UTC)
    rep.generated = when
    manifest = {
        "school": school.code, "name": school.name, "category": listing["category"], "export_id": export_id,
        "user_data": users, "complete": rep.complete, "updated": when.isoformat(),
        "agreement_end": inv.platform.agreement_end.isoformat(),
        "courses": sorted(done, key=lambda c: c["id"]), "failed": [_public(c) for c in rep.failed],
        "how_to_restore": "Moodle > Site administration > Courses > Restore course, or "
                          "admin/cli/restore_backup.php --file=<file.mbz> --categoryid=<id>",
    }
    sums = "".join(f"{c['sha256']}  courses/{c['key'].rsplit('/', 1)[-1]}\n" for c in manifest["courses"])
    put_bytes(s3, cfg, pre + "SHA256SUMS", sums.encode(), content_type="text/plain")
    rep.manifest_key = pre + "manifest.json"
    put_bytes(s3, cfg, rep.manifest_key, json.dumps(manifest, indent=1).encode(), content_type="application/json")
    if signer is not None:
        life = link_lifetime((link_hours or cfg.link_expiry_hours) * 3600, when, signer.credentials_expire,
                             signer.session_credentials)
        for key in [rep.manifest_key, pre + "SHA256SUMS", *(c["key"] for c in manifest["courses"])]:
            rep.links[key] = signer.url(cfg.bucket, key, life.seconds)
        rep.links_seconds, rep.links_note = life.seconds, life.note
        rep.links_expire = life.expires.astimezone(UTC).isoformat(timespec="minutes")
    if rep.complete and work is not None:
        shutil.rmtree(work, ignore_errors=True)
    rep.seconds = time.monotonic() - started
    return rep


def _made_file(journal: Journal, course_id: int, users: bool) -> Path | None:
    """The .mbz an interrupted run had made for this course with the same setting, if intact."""
    j = journal.course(course_id)
    if j.get("step") != "backed-up" or j.get("user_data") is not users or not j.get("file"):
        return None
    path = Path(j["file"])
    try:
        if path.stat().st_size != j.get("size") or _sha256(path) != j.get("sha256"):
            return None
    except OSError:
        return None
    return path


def prior_mailing(state_dir: Path, school: School, rep: ExportReport, now: datetime) -> dict[str, Any] | None:
    """The mailing of this export that a re-run need not repeat: nothing was
    exported by this run, the same manifest was mailed to every referent the
    school has now, and those links still work. None: mail."""
    if rep.exported:
        return None
    for m in reversed(Journal(state_dir, school, rep.export_id).data["mailed"]):
        try:
            expires = datetime.fromisoformat(str(m["links_expire"]))
        except (KeyError, ValueError):
            continue
        if m.get("manifest") == rep.manifest_key and expires > now and set(school.referents) <= set(m.get("to", [])):
            return dict(m)
    return None


def record_mailing(state_dir: Path, school: School, rep: ExportReport, to: list[str], at: datetime) -> None:
    Journal(state_dir, school, rep.export_id).add_mailing(
        {"at": at.isoformat(timespec="seconds"), "to": to, "links_expire": rep.links_expire,
         "manifest": rep.manifest_key})


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


@dataclass(frozen=True)
class SchoolStatus:
    code: str
    name: str
    exported: bool
    export_id: str          # the complete export, or the latest attempt
    courses: int
    referents: tuple[str, ...]


def export_status(s3: Any, cfg: BackupConfig, inv: Inventory) -> list[SchoolStatus]:
    out = []
    for school in inv.schools:
        base = cfg.key("exports", school.code, "")
        best: tuple[bool, str, int] = (False, "", 0)
        for key in list_keys(s3, cfg, base):
            if not key.endswith("/manifest.json"):
                continue
            m = json.loads(get_bytes(s3, cfg, key))
            cand = (bool(m.get("complete")), str(m.get("export_id")), len(m.get("courses", [])))
            if cand[0] >= best[0]:
                best = cand
        out.append(SchoolStatus(school.code, school.name, best[0], best[1], best[2], school.referents))
    return out


def reminder_lines(statuses: list[SchoolStatus], cfg: BackupConfig, agreement_end: date,
                   today: date) -> tuple[list[str], bool]:
    """The reminder report and whether it is due (pending schools inside the reminder window)."""
    left = (agreement_end - today).days
    pending = [s for s in statuses if not s.exported]
    window = [d for d in cfg.reminder_days if left <= d]
    due = bool(pending) and (bool(window) or left < 0)
    head = (f"agreement ends {agreement_end.isoformat()}: {left} day(s) left" if left >= 0
            else f"agreement ENDED {agreement_end.isoformat()} ({-left} day(s) ago): content is no longer kept")
    lines = [head, f"  {len(statuses) - len(pending)}/{len(statuses)} school(s) exported"]
    if window:
        lines.append(f"  reminder stage: {min(window)} days before the end")
    for s in statuses:
        state = f"exported ({s.export_id}, {s.courses} course(s))" if s.exported else \
            ("PENDING" + (f" (incomplete attempt {s.export_id})" if s.export_id else ""))
        lines.append(f"  {s.code:<16} {state}" + ("" if s.exported else f"  referents: {', '.join(s.referents)}"))
    return lines, due

