"""School exports without Moodle: the courses and their .mbz files come from a
source that writes small pre-made files (Moodle's own backup is covered by the
stack test test_backup.py::test_5), everything else is real: S3 is moto in
server mode on loopback, the mail goes to an aiosmtpd server on loopback, the
inventory is a copy of the local one with a tiny multipart threshold."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from prom_loopback import free_port
from s3_smtp_loopback import Inbox, moto_s3, relay_tls, smtp_relay

from moodleops import REPO_ROOT
from moodleops.backup.config import backup_config
from moodleops.backup.s3 import client, list_keys, presigner
from moodleops.backup.school_export import (
    S3_MAX_LINK_SECONDS,
    Journal,
    course_key,
    export_school,
    link_lifetime,
    prefix,
)
from moodleops.cli import main
from moodleops.errors import BusyError, S3Error
from moodleops.inventory import School, load_inventory

BUCKET = "moodleops-export-test"
SCHOOL = "ifsi_millau"
MiB = 1024 * 1024





@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_s3(BUCKET) as url:
        yield url


@pytest.fixture()
def smtp() -> Iterator[tuple[int, Inbox]]:
    with smtp_relay() as relay:
        yield relay


@dataclass
class FileCourses:
    """A school's courses as Moodle would list them, and for each a small
    pre-made .mbz whose bytes depend on the course and the user-data setting
    (so that a redone export is seen in the bucket). `big` courses are larger
    than the test's multipart threshold."""

    root: Path
    big: set[int] = field(default_factory=set)
    calls: list[tuple[int, bool]] = field(default_factory=list)
    kill_on_call: int = 0          # SIGKILL this process on that backup call (1-based): `kill -9` mid-way
    courses: tuple[int, ...] = (101, 102)

    def list_courses(self, category_idnumber: str) -> dict[str, Any]:
        return {"category": {"id": 7, "name": category_idnumber, "idnumber": category_idnumber},
                "courses": [{"id": c, "shortname": f"c{c}", "fullname": f"Course {c}", "category": "Sem 1",
                             "categoryid": 7, "timemodified": 0} for c in self.courses]}

    def content(self, course_id: int, users: bool) -> bytes:
        size = 6 * MiB + 123 if course_id in self.big else 20_000
        seed = hashlib.sha256(f"{course_id}-{users}".encode()).digest()
        body = (seed * (size // len(seed) + 1))[:size]
        return f"MBZ course={course_id} users={int(users)}\n".encode() + body

    def backup_course(self, course_id: int, users: bool, destination: Path) -> Path:
        self.calls.append((course_id, users))
        if len(self.calls) == self.kill_on_call:
            os.kill(os.getpid(), signal.SIGKILL)
        path = destination / f"backup-moodle2-course-{course_id}-{'u' if users else 'nu'}.mbz"
        path.write_bytes(self.content(course_id, users))
        return path

    def work_dir(self, school: School, export_id: str) -> Path:
        d = self.root / "work" / school.code / export_id
        d.mkdir(parents=True, exist_ok=True)
        return d


def killed(fn: Callable[[], object]) -> None:
    """`fn` in a forked child that SIGKILLs itself where the test says, as a `kill -9`
    or a lost SSH session would: no `finally`, no flush, no exception to catch."""
    proc = multiprocessing.get_context("fork").Process(target=fn)
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL, f"the child ended with {proc.exitcode}, not by SIGKILL"


def make_inventory(root: Path, moto_url: str, smtp_port: int, **extra: Any) -> Path:
    for name in ("platform.yml", "schools.yml", "moodle.yml", "capacity.yml", "loadmodel.yml"):
        shutil.copy(REPO_ROOT / "inventory" / name, root / name)
    env = root / "exporttest"
    (env / "group_vars").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "inventory/local/hosts.yml", env / "hosts.yml")
    gv = yaml.safe_load((REPO_ROOT / "inventory/local/group_vars/all.yml").read_text())
    gv.update({
        "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": moto_url, "backup_s3_prefix": f"{root.name}/",
        "backup_part_size_mb": 5, "backup_export_multipart_threshold_mb": 1,
        "backup_export_smtp_host": "127.0.0.1", "backup_export_smtp_port": smtp_port,
        "moodleops_state_dir": str(root / "state"), **extra,
    })
    (env / "group_vars/all.yml").write_text(yaml.safe_dump(gv))
    return env


def set_user_data(env: Path, code: str, flag: bool) -> None:
    p = env / "group_vars/all.yml"
    gv = yaml.safe_load(p.read_text())
    gv["backup_export_user_data"] = {code: flag}
    p.write_text(yaml.safe_dump(gv))


def run(env: Path, source: FileCourses, **kw: Any) -> Any:
    inv = load_inventory(str(env))
    cfg = backup_config(inv)
    return export_school(client(cfg), cfg, inv, inv.school(SCHOOL), "eoa", source=source,
                         state_dir=env.parent / "state", signer=kw.pop("signer", presigner(cfg)), **kw)


def body(url: str) -> bytes:
    got = requests.get(url, timeout=30)
    assert got.status_code == 200, (url, got.status_code, got.text[:300])
    return got.content


def test_big_course_goes_up_in_parts_small_one_in_one_put(tmp_path: Path, moto_url: str) -> None:
    env = make_inventory(tmp_path, moto_url, 25)
    src = FileCourses(tmp_path, big={101})
    rep = run(env, src)
    assert rep.complete and [c["id"] for c in rep.exported] == [101, 102]
    by_id = {c["id"]: c for c in rep.exported}
    assert by_id[101]["upload"] == "multipart, 2 part(s)" and by_id[102]["upload"] == "single PUT"
    inv = load_inventory(str(env))
    cfg = backup_config(inv)
    s3 = client(cfg)
    for cid, parts in ((101, "-2"), (102, None)):
        key = course_key(cfg, inv.school(SCHOOL), "eoa", {"id": cid, "shortname": f"c{cid}"})
        head = s3.head_object(Bucket=BUCKET, Key=key)
        # S3 gives a multipart object an ETag "<md5 of the part md5s>-<parts>".
        assert (head["ETag"].strip('"').endswith(parts) if parts else "-" not in head["ETag"]), head["ETag"]
        assert head["Metadata"]["user-data"] == "no" and head["ServerSideEncryption"] == "AES256"
        data = body(rep.links[key])
        assert data == src.content(cid, False)
        assert hashlib.sha256(data).hexdigest() == head["Metadata"]["sha256"] == by_id[cid]["sha256"]
    sums = body(next(u for k, u in rep.links.items() if k.endswith("SHA256SUMS"))).decode()
    man = json.loads(body(rep.links[rep.manifest_key]))
    assert man["complete"] and [c["id"] for c in man["courses"]] == [101, 102]
    for c in man["courses"]:
        assert f"{c['sha256']}  courses/{c['key'].rsplit('/', 1)[-1]}" in sums and c["user_data"] is False
    assert not any((tmp_path / "work").rglob("*.mbz"))     # uploaded files are removed


def test_rerun_skips_done_courses_and_redoes_those_whose_user_data_setting_changed(
        tmp_path: Path, moto_url: str) -> None:
    env = make_inventory(tmp_path, moto_url, 25)
    src = FileCourses(tmp_path, big={101})
    first = run(env, src)
    assert len(first.exported) == 2 and src.calls == [(101, False), (102, False)]
    again = run(env, src)
    assert again.exported == [] and [c["id"] for c in again.already] == [101, 102]
    assert len(src.calls) == 2, "a rerun must not back up a course already exported with the same setting"

    set_user_data(env, SCHOOL, True)          # the school now asks for its learners' work
    redo = run(env, src)
    assert [c["id"] for c in redo.exported] == [101, 102] and redo.already == [] and redo.redone == 2
    assert "without user data" in redo.exported[0]["redo"] and "now says with user data" in redo.exported[0]["redo"]
    assert src.calls[2:] == [(101, True), (102, True)]
    assert "2 redone: user data changed" in redo.lines()[0]
    for c in redo.exported:
        assert body(redo.links[c["key"]]) == src.content(c["id"], True)
    man = json.loads(body(redo.links[redo.manifest_key]))
    assert man["user_data"] is True and all(c["user_data"] for c in man["courses"])
    # Done with the new setting: nothing more to do.
    assert run(env, src).exported == [] and len(src.calls) == 4


def test_killed_runs_resume_from_the_journal(tmp_path: Path, moto_url: str) -> None:
    env = make_inventory(tmp_path, moto_url, 25)
    inv = load_inventory(str(env))
    school = inv.school(SCHOOL)
    # Killed while Moodle backs up the second course: its intent was recorded first.
    killed(lambda: run(env, FileCourses(tmp_path, big={101}, kill_on_call=2)))
    journal = Journal(tmp_path / "state", school, "eoa")
    assert journal.course(101)["step"] == "uploaded" and journal.course(102)["step"] == "backing-up"
    assert journal.course(102)["user_data"] is False
    src = FileCourses(tmp_path, big={101})
    rep = run(env, src)
    assert [c["id"] for c in rep.already] == [101] and [c["id"] for c in rep.exported] == [102]
    assert src.calls == [(102, False)], "the course uploaded before the kill is not asked of Moodle again"

    # Killed after the first part of a multipart upload: the rerun neither asks
    # Moodle again nor resends that part.
    set_user_data(env, SCHOOL, True)
    src2 = FileCourses(tmp_path, big={101})
    killed(lambda: run(env, FileCourses(tmp_path, big={101}),
                       on_part=lambda n: os.kill(os.getpid(), signal.SIGKILL)))
    j = Journal(tmp_path / "state", school, "eoa").course(101)
    assert j["step"] == "backed-up" and j["user_data"] is True and Path(j["file"]).is_file()
    assert Journal(tmp_path / "state", school, "eoa").upload_state(101).is_file()
    sent: list[int] = []
    rep = run(env, src2, on_part=sent.append)
    big = next(c for c in rep.exported if c["id"] == 101)
    assert big["upload"] == "multipart, 2 part(s), 1 resumed" and sent == [2]
    assert src2.calls == [(102, True)], "the file Moodle made before the kill is reused"
    assert "resumed: Moodle's file was already made" in "\n".join(rep.lines())
    assert body(rep.links[big["key"]]) == src2.content(101, True)


def test_link_lifetime_is_the_shortest_of_asked_credentials_and_seven_days() -> None:
    now = datetime(2029, 6, 1, 12, 0, tzinfo=UTC)
    week = link_lifetime(168 * 3600, now, None, False)
    assert week.seconds == S3_MAX_LINK_SECONDS and week.note == ""
    long = link_lifetime(720 * 3600, now, None, False)
    assert long.seconds == S3_MAX_LINK_SECONDS and "SHORTENED" in long.note and "7 days" in long.note
    creds = link_lifetime(168 * 3600, now, now + timedelta(hours=2), True)
    assert creds.seconds == 7200 and creds.expires == now + timedelta(hours=2)
    assert "SHORTENED" in creds.note and "session credentials" in creds.note and "2029-06-01T14:00" in creds.note
    short = link_lifetime(3600, now, now + timedelta(hours=2), True)
    assert short.seconds == 3600 and short.note == ""
    unknown = link_lifetime(3600, now, None, True)
    assert unknown.seconds == 3600 and "expiry is not known" in unknown.note
    with pytest.raises(S3Error, match="expire at"):
        link_lifetime(3600, now, now + timedelta(seconds=30), True)


def test_links_never_outlive_the_session_credentials_that_sign_them(
        tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_inventory(tmp_path, moto_url, 25)
    expiry = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    # Session credentials with a known expiry, as botocore reads them from the environment.
    monkeypatch.setenv("AWS_SESSION_TOKEN", "moodleops-test-session")
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", expiry.isoformat())
    src = FileCourses(tmp_path)
    rep = run(env, src)
    assert "SHORTENED" in rep.links_note and "session credentials" in rep.links_note
    assert rep.links_expire == expiry.isoformat(timespec="minutes") or \
        abs(datetime.fromisoformat(rep.links_expire) - expiry) <= timedelta(minutes=1)
    for url in rep.links.values():
        q = parse_qs(urlsplit(url).query)
        assert abs(int(q["X-Amz-Expires"][0]) - 3 * 3600) <= 60
        assert q["X-Amz-Security-Token"] == ["moodleops-test-session"]
    assert any(line.startswith("  NOTE: links SHORTENED") for line in rep.lines())
    body(rep.links[rep.manifest_key])


def _cli(env: Path, monkeypatch: pytest.MonkeyPatch, src: FileCourses, *argv: str) -> int:
    # Moodle's backup_controller is the one thing replaced: by the pre-made files.
    monkeypatch.setattr("moodleops.backup.cli.MoodleCourses", lambda site: src)
    return main(["--inventory", str(env), "backup", "export", "--school", SCHOOL, "--export-id", "eoa", *argv])


def test_links_are_mailed_to_the_referents(tmp_path: Path, moto_url: str, smtp: tuple[int, Inbox],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    port, inbox = smtp
    env = make_inventory(tmp_path, moto_url, port)
    referents = list(load_inventory(str(env)).school(SCHOOL).referents)
    src = FileCourses(tmp_path, big={101})
    assert _cli(env, monkeypatch, src, "--mail", "--link-hours", "48", "--format", "json") == 0
    rep = json.loads(capsys.readouterr().out)[0]
    assert rep["mailed_to"] == referents and len(inbox.received) == 1
    mail_from, rcpt, msg = inbox.messages[0]
    assert mail_from == "moodle-exports@example.invalid" and rcpt == referents
    assert msg["To"] == ", ".join(referents) and "IFSI Millau" in msg["Subject"]
    text = msg.get_payload(decode=True).decode()
    assert len(rep["links"]) == 4 and all(url in text for url in rep["links"].values())
    assert rep["links_expire"] in text and rep["links_expire"] in msg["Subject"]
    assert rep["links_seconds"] == 48 * 3600 and "without user data" in text
    for url in rep["links"].values():
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(48 * 3600)]
    journal = Journal(tmp_path / "state", load_inventory(str(env)).school(SCHOOL), "eoa")
    assert journal.data["mailed"][-1]["to"] == referents
    # A re-run with --mail does not mail the referents twice while their links work...
    assert _cli(env, monkeypatch, src, "--mail") == 0
    out = capsys.readouterr().out
    assert f"already mailed to {', '.join(referents)}" in out and "--mail-again" in out, out
    assert len(inbox.received) == 1
    # ...and --mail-again does, with the new links.
    assert _cli(env, monkeypatch, src, "--mail-again", "--format", "json") == 0
    again = json.loads(capsys.readouterr().out)[0]
    assert len(inbox.received) == 2 and again["mailed_to"] == referents
    assert all(u in inbox.messages[1][2].get_payload(decode=True).decode() for u in again["links"].values())
    assert len(Journal(tmp_path / "state", load_inventory(str(env)).school(SCHOOL), "eoa").data["mailed"]) == 2


def test_smtp_down_is_one_line_exit_4_and_a_rerun_mails_without_uploading(
        tmp_path: Path, moto_url: str, smtp: tuple[int, Inbox], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    port, inbox = smtp
    down = free_port()               # nothing listens there
    env = make_inventory(tmp_path, moto_url, down)
    src = FileCourses(tmp_path, big={101})
    assert _cli(env, monkeypatch, src, "--mail") == 4
    out, err = capsys.readouterr()
    # stderr: the progress of the transfers, then one line for the failure.
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("moodleops:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert lines[0].startswith(f"moodleops: error: SMTP 127.0.0.1:{down}: connection refused (check ")
    assert f"{SCHOOL}: 2 course(s) uploaded" in lines[0] and "--mail" in lines[0]
    assert f"links NOT mailed for {SCHOOL}" in lines[0]
    # The exports done are reported as such on stdout, links included.
    assert re.search(r"exported +101 c101 .*multipart", out) and "links for the referents" in out
    inv = load_inventory(str(env))
    cfg = backup_config(inv)
    s3 = client(cfg)
    prefix = cfg.key("exports", SCHOOL, "eoa", "courses/")
    before = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert len(before) == 2

    set_port = env / "group_vars/all.yml"
    gv = yaml.safe_load(set_port.read_text())
    gv["backup_export_smtp_port"] = port          # the relay is back
    set_port.write_text(yaml.safe_dump(gv))
    time.sleep(1)                                # LastModified has a one-second resolution
    assert _cli(env, monkeypatch, src, "--mail", "--format", "json") == 0
    rep = json.loads(capsys.readouterr().out)[0]
    assert rep["exported"] == [] and len(rep["already"]) == 2 and len(src.calls) == 2
    after = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert after == before, "the rerun must not upload again"
    assert len(inbox.received) == 1 and all(u in inbox.messages[0][2].get_payload(decode=True).decode()
                                            for u in rep["links"].values())


def test_dry_run_says_what_would_be_done_and_does_nothing(tmp_path: Path, moto_url: str, smtp: tuple[int, Inbox],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    port, inbox = smtp
    env = make_inventory(tmp_path, moto_url, port)
    src = FileCourses(tmp_path)
    assert _cli(env, monkeypatch, src, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "2 course(s) to export" in out and "dry run: nothing backed up, uploaded or mailed" in out
    assert "would mail the links to ref-ifsi-millau@example.invalid" in out
    cfg = backup_config(load_inventory(str(env)))
    assert client(cfg).list_objects_v2(Bucket=BUCKET, Prefix=cfg.prefix).get("KeyCount") == 0
    assert src.calls == [] and not (tmp_path / "state").exists() and inbox.received == []
    assert _cli(env, monkeypatch, src) == 0
    out = capsys.readouterr().out
    assert "links not mailed: add --mail" in out and inbox.received == []
    set_user_data(env, SCHOOL, True)
    assert _cli(env, monkeypatch, src, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "2 course(s) to export (2 redone: user data changed)" in out and "now says with user data" in out
    assert len(src.calls) == 2
    assert _cli(env, monkeypatch, src, "--dry-run", "--mail") == 2
    assert "--dry-run and --mail" in capsys.readouterr().err


def test_bad_smtp_settings_are_refused_at_the_boundary(tmp_path: Path, moto_url: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    env = make_inventory(tmp_path, moto_url, 70000)
    assert main(["--inventory", str(env), "backup", "export", "--school", SCHOOL, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backup_export_smtp_port" in err[0]


def test_a_second_run_of_the_same_export_is_refused_while_the_first_runs(tmp_path: Path, moto_url: str) -> None:
    env = make_inventory(tmp_path, moto_url, 25)
    src = FileCourses(tmp_path, big=set())
    lock = tmp_path / "state" / "backup" / "exports" / SCHOOL / "eoa" / ".lock"
    lock.parent.mkdir(parents=True)
    # Another process (flock(1)) holds the export's lock, as a first run would.
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "echo held; sleep 60"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match="already running on this host"):
            run(env, src)
        assert src.calls == [], "a refused run must not back up anything"
        inv = load_inventory(str(env))
        cfg = backup_config(inv)
        assert not list_keys(client(cfg), cfg, prefix(cfg, inv.school(SCHOOL), "eoa"))
    finally:
        os.killpg(holder.pid, signal.SIGKILL)    # flock's child holds the lock too
        holder.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(holder.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    assert run(env, src).complete      # once the first run is gone, the export goes on


def test_the_mail_goes_over_starttls_with_the_relays_certificate_checked(
        tmp_path: Path, moto_url: str, smtp: tuple[int, Inbox], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ca_file, server = relay_tls(tmp_path)
    src = FileCourses(tmp_path, big=set())
    with smtp_relay(server) as (port, inbox):
        # That relay takes no mail in clear: what arrives came over TLS.
        env = make_inventory(tmp_path, moto_url, port)
        assert _cli(env, monkeypatch, src, "--mail") == 4
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"moodleops: error: SMTP 127.0.0.1:{port}: ") and inbox.received == [], err

        env = make_inventory(tmp_path, moto_url, port, backup_export_smtp_starttls=True)
        assert _cli(env, monkeypatch, src, "--mail") == 4
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "the relay's certificate is not trusted" in err and "checked against the system's CAs" in err, err
        assert "backup_export_smtp_ca_file" in err and inbox.received == []

        env = make_inventory(tmp_path, moto_url, port, backup_export_smtp_starttls=True,
                             backup_export_smtp_ca_file=str(ca_file))
        assert _cli(env, monkeypatch, src, "--mail", "--format", "json") == 0
        rep = json.loads(capsys.readouterr().out)[0]
        assert len(inbox.received) == 1 and rep["mailed_to"] == inbox.messages[0][1]

    # A relay without STARTTLS, asked for it: one line, nothing sent in clear.
    plain_port, plain_inbox = smtp
    env = make_inventory(tmp_path, moto_url, plain_port, backup_export_smtp_starttls=True)
    assert _cli(env, monkeypatch, src, "--mail", "--mail-again") == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not offer STARTTLS" in err and plain_inbox.received == [], err


@pytest.mark.parametrize(("extra", "says"), [
    ({"backup_export_smtp_starttls": "yes"}, "backup_export_smtp_starttls"),
    ({"backup_export_smtp_starttls": True, "backup_export_smtp_ca_file": "relative.pem"}, "absolute path"),
    ({"backup_export_smtp_ca_file": "/etc/ssl/certs/ca-certificates.crt"}, "backup_export_smtp_starttls is false"),
])
def test_bad_starttls_settings_are_refused_at_the_boundary(tmp_path: Path, moto_url: str, extra: dict[str, Any],
                                                           says: str, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    env = make_inventory(tmp_path, moto_url, 25, **extra)
    assert _cli(env, monkeypatch, FileCourses(tmp_path, big=set()), "--mail") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
