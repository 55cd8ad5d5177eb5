"""A school's end-of-agreement export: every course below its category backed
up through Moodle (.mbz, with or without user data as the inventory decides),
uploaded under exports/<school>/<export id>/, with manifest.json and
SHA256SUMS, shared with its referents through pre-signed links.

Each finished course is one object in the bucket: a rerun lists them and
backs up only the courses still missing (or failed)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from moodleops.backup.config import BackupConfig
from moodleops.backup.progress import human_bytes, human_seconds
from moodleops.backup.s3 import ensure_bucket, get_bytes, list_keys, put_bytes
from moodleops.inventory import Inventory, School
from moodleops.moodle import MoodleCLI, MoodleError
from moodleops.site import Site

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXPORT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def prefix(cfg: BackupConfig, school: School, export_id: str) -> str:
    return cfg.key("exports", school.code, export_id, "")


def course_key(cfg: BackupConfig, school: School, export_id: str, course: dict[str, Any]) -> str:
    name = _SAFE.sub("_", str(course["shortname"]))[:80]
    return f"{prefix(cfg, school, export_id)}courses/{course['id']}-{name}.mbz"


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
    manifest_key: str = ""
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        out = [(f"school {self.school}, export {self.export_id} ({'with' if self.user_data else 'without'} user data): "
               f"{len(self.exported)} course(s) exported now, {len(self.already)} already done, "
               f"{len(self.failed)} failed, in {human_seconds(self.seconds)}")]
        for c in self.exported:
            out.append(f"  exported  {c['id']:>6} {c['shortname']}  {human_bytes(c['size'])}")
        for c in self.already:
            out.append(f"  done      {c['id']:>6} {c['shortname']}")
        for c in self.failed:
            out.append(f"  FAILED    {c['id']:>6} {c['shortname']}: {c['error']}")
        out.append(f"  manifest: {self.manifest_key}")
        if self.links:
            out.append(f"  links for the referents (expire {self.links_expire}):")
            out += [f"    {k.rsplit('/', 1)[-1]}: {u}" for k, u in self.links.items()]
        return out


def _work_dir(site: Site, school: School, export_id: str) -> Path:
    """Where Moodle (the web user) writes the .mbz files: its own temp area in
    moodledata (big enough, writable by it, swept by Moodle after a week)."""
    pw = pwd.getpwnam(site.web_user)
    d = site.dataroot / "temp"
    for part in ("moodleops-export", school.code, export_id):
        d = d / part
        d.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(d, pw.pw_uid, pw.pw_gid)
        os.chmod(d, 0o2770)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def export_school(s3: Any, cfg: BackupConfig, inv: Inventory, site: Site, school: School, export_id: str, *,
                  now: datetime | None = None) -> ExportReport:
    started = time.monotonic()
    ensure_bucket(s3, cfg)
    users = cfg.user_data_for(school.code)
    rep = ExportReport(school=school.code, export_id=export_id, user_data=users)
    moodle = MoodleCLI(site)
    listing = moodle.tool("school_export", payload={"mode": "list", "category_idnumber": school.category_idnumber})
    pre = prefix(cfg, school, export_id)
    present = list_keys(s3, cfg, pre + "courses/")
    work = _work_dir(site, school, export_id)
    total = len(listing["courses"])
    for i, course in enumerate(listing["courses"], 1):
        key = course_key(cfg, school, export_id, course)
        entry = {"id": course["id"], "shortname": course["shortname"], "fullname": course["fullname"],
                 "category": course["category"], "key": key}
        if key in present:
            head = s3.head_object(Bucket=cfg.bucket, Key=key)
            entry.update(size=head["ContentLength"], sha256=head.get("Metadata", {}).get("sha256", ""))
            rep.already.append(entry)
            continue
        print(f"  [{i}/{total}] backing up course {course['id']} {course['shortname']} through Moodle ...",
              file=sys.stderr, flush=True)
        try:
            out = moodle.tool("school_export", payload={"mode": "backup", "courseid": course["id"], "users": users,
                                                       "destination": str(work)}, timeout=3600)
            path = Path(out["file"])
            data_sha = _sha256(path)
            with open(path, "rb") as fh:
                # Single PUT up to 5 GiB; the checksum makes S3 reject a damaged upload.
                s3.put_object(Bucket=cfg.bucket, Key=key, Body=fh, ServerSideEncryption=cfg.sse,
                              ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(data_sha),
                              Metadata={"sha256": data_sha, "courseid": str(course["id"]),
                                        "user-data": "yes" if users else "no"})
            entry.update(size=path.stat().st_size, sha256=data_sha)
            path.unlink()
            rep.exported.append(entry)
        except (MoodleError, OSError, KeyError) as exc:
            entry["error"] = " ".join(str(exc).split())[-300:]   # the end says what failed
            rep.failed.append(entry)
    done = rep.already + rep.exported
    when = now or datetime.now(UTC)
    manifest = {
        "school": school.code, "name": school.name, "category": listing["category"], "export_id": export_id,
        "user_data": users, "complete": rep.complete, "updated": when.isoformat(),
        "agreement_end": inv.platform.agreement_end.isoformat(),
        "courses": sorted(done, key=lambda c: c["id"]), "failed": rep.failed,
        "how_to_restore": "Moodle > Site administration > Courses > Restore course, or "
                          "admin/cli/restore_backup.php --file=<file.mbz> --categoryid=<id>",
    }
    sums = "".join(f"{c['sha256']}  courses/{c['key'].rsplit('/', 1)[-1]}\n" for c in manifest["courses"])
    put_bytes(s3, cfg, pre + "SHA256SUMS", sums.encode(), content_type="text/plain")
    rep.manifest_key = pre + "manifest.json"
    put_bytes(s3, cfg, rep.manifest_key, json.dumps(manifest, indent=1).encode(), content_type="application/json")
    expiry = cfg.link_expiry_hours * 3600
    for key in [rep.manifest_key, pre + "SHA256SUMS", *(c["key"] for c in manifest["courses"])]:
        rep.links[key] = s3.generate_presigned_url("get_object", Params={"Bucket": cfg.bucket, "Key": key},
                                                   ExpiresIn=expiry)
    rep.links_expire = datetime.fromtimestamp(when.timestamp() + expiry, UTC).isoformat(timespec="minutes")
    if rep.complete:
        shutil.rmtree(work, ignore_errors=True)
    rep.seconds = time.monotonic() - started
    return rep


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

