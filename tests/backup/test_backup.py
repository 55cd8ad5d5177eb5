"""Backups to S3 (moto in server mode on loopback, a real S3 API) of a
rehearsal Moodle installed beside the main stack, and destructive restores
onto that rehearsal only: the main stack (:8080, database `moodle`) is never
touched. Tests run in order and share one rehearsal and one bucket."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from beside_stack import SHARED, psql
from cryptography.fernet import Fernet
from restoretest_stack import DB, Rehearsal, build_inventory, provision, remove_rehearsal
from s3_smtp_loopback import Inbox, moto_s3, smtp_relay

from moodleops.backup import manifest, retention, sealing
from moodleops.backup.blobs import scan_filedir
from moodleops.backup.config import BackupConfig, Retention, backup_config
from moodleops.backup.index import BlobIndex
from moodleops.backup.multipart import upload_file
from moodleops.backup.platform_backup import run_backup
from moodleops.backup.s3 import client, list_keys
from moodleops.cli import main
from moodleops.errors import ExitStatus
from moodleops.inventory import load_inventory
from moodleops.platform.lock import platform_lock
from moodleops.platform.provision import provisioning_lock
from moodleops.site import site_of
from moodleops.webclient import login

pytestmark = pytest.mark.stack

HERE = Path(__file__).resolve().parent
TAG = "t" + uuid.uuid4().hex[:8]
PASSWORD = "Bk-" + uuid.uuid4().hex[:10] + "!"
BUCKET = "moodleops-backup-test"
KEY = Fernet.generate_key().decode()          # the manifest key: in the environment, never in the bucket





@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_s3(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[int, Inbox]]:
    with smtp_relay() as relay:
        yield relay


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, provisioned: object, moto_url: str,
          smtp: tuple[int, Inbox]) -> Iterator[Rehearsal]:
    root = tmp_path_factory.mktemp("restoretest-inventory")
    r = build_inventory(root, {
        "backup_export_smtp_host": "127.0.0.1", "backup_export_smtp_port": smtp[0],
        "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": moto_url, "backup_s3_prefix": f"{TAG}/",
        "backup_part_size_mb": 5, "backup_workers": 4,
        "backup_retention": {"daily": 1, "weekly": 0, "monthly": 0},
    })
    # A school of the test's own, whose category the fixture creates in the rehearsal.
    schools = yaml.safe_load((root / "schools.yml").read_text())
    schools["schools"].append({"code": f"bk_{TAG}", "name": f"Backup school {TAG}",
                               "category_idnumber": f"BK-SCH-{TAG}", "students": 1, "trainers": 1,
                               "referents": [f"ref-{TAG}@example.invalid"]})
    (root / "schools.yml").write_text(yaml.safe_dump(schools, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("MOODLEOPS_ARTIFACTS", str(SHARED))
    mp.setenv("MOODLEOPS_BACKUP_MANIFEST_KEY", KEY)
    mp.delenv("MOODLEOPS_BACKUP_S3_ENDPOINT_URL", raising=False)
    with provisioning_lock():
        provision(r)
    try:
        data(r, "create")
        yield r
    finally:
        mp.undo()
        with provisioning_lock():
            remove_rehearsal()


def data(r: Rehearsal, mode: str) -> dict[str, Any]:
    out: dict[str, Any] = r.moodle().tool(str(HERE / "backup_data.php"),
                                          payload={"mode": mode, "tag": TAG, "password": PASSWORD})
    return out


def ctx(r: Rehearsal) -> tuple[Any, BackupConfig, Any, Any]:
    inv = load_inventory(str(r.env))
    cfg = backup_config(inv)
    return inv, cfg, client(cfg), site_of(inv)


def cli(r: Rehearsal, *argv: str) -> int:
    return main(["--inventory", str(r.env), "backup", *argv])


def test_1_backup_then_incremental_sends_only_new_blobs(stack: Rehearsal) -> None:
    inv, cfg, s3, site = ctx(stack)
    first = run_backup(s3, cfg, inv, site)
    local1 = scan_filedir(site.dataroot / "filedir")
    in_bucket = set(list_keys(s3, cfg, cfg.key("blobs", "")))
    assert {cfg.key("blobs", h) for h in local1} <= in_bucket
    assert first.blobs.uploaded == len(local1) and first.blobs.skipped == 0
    m1 = manifest.get(s3, cfg, first.manifest_key)
    assert set(manifest.iter_blobs(s3, cfg, m1)) >= set(local1)
    assert m1["moodle"]["release"].startswith("4.1") and m1["moodle"]["plugins"]
    assert m1["checks"]["referenced_by_dump"] > 0 and m1["checks"]["missing_count"] == 0
    head = s3.head_object(Bucket=cfg.bucket, Key=first.manifest_key)
    assert head["ServerSideEncryption"] == "AES256"
    # What a bucket reader gets: no password, no config.php in clear; the key is not in the bucket.
    raw = gzip.decompress(s3.get_object(Bucket=cfg.bucket, Key=first.manifest_key)["Body"].read())
    assert site.secret("db_password").encode() not in raw and b"<?php" not in raw and b"dbpass" not in raw
    assert "config_php" not in m1 and m1["secrets"]["cipher"] == "fernet"
    config_php = sealing.unseal(KEY.encode(), m1["secrets"], first.manifest_key)["config_php"]
    assert config_php.startswith("<?php") and "moodle_restoretest" in config_php
    assert site.secret("db_password") in config_php
    for key in list_keys(s3, cfg, cfg.key("")):
        assert KEY.encode() not in s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read(), key
    assert not list_keys(s3, cfg, cfg.key("markers", "inprogress", ""))     # removed once the manifest is in

    # New content through Moodle, then a second run: only it is sent.
    stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "create", "tag": TAG + "b",
                                                               "password": PASSWORD})
    local2 = scan_filedir(site.dataroot / "filedir")
    new = set(local2) - set(local1)
    assert new
    time.sleep(1)   # backup ids have a one-second resolution
    second = run_backup(s3, cfg, inv, site)
    assert second.blobs.uploaded == len(new)
    assert second.blobs.skipped == len(local2) - len(new)
    assert set(list_keys(s3, cfg, cfg.key("blobs", ""))) == in_bucket | {cfg.key("blobs", h) for h in new}
    print(f"first: {first.blobs.uploaded} blobs sent; second: {second.blobs.uploaded} sent, "
          f"{second.blobs.skipped} skipped")


def test_2_interrupted_upload_resumes(stack: Rehearsal, tmp_path: Path) -> None:
    inv, cfg, s3, site = ctx(stack)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))          # 3 parts of 5 MiB
    state = tmp_path / "upload.json"
    key = cfg.key("test", "big.bin")

    class Cut(Exception):
        pass

    def cut_after_2(n: int) -> None:
        if n == 2:
            raise Cut

    with pytest.raises(Cut):
        upload_file(s3, cfg, big, key, state, on_part=cut_after_2)
    assert state.exists()
    sent: list[int] = []
    res = upload_file(s3, cfg, big, key, state, on_part=sent.append)
    assert res.parts == 3 and res.parts_resumed == 2 and sent == [3]
    body = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest() == res.sha256

    # A whole run cut during the dump upload: the next run resumes it (same id, same dump).
    def cut(n: int) -> None:
        raise Cut

    with pytest.raises(Cut):
        run_backup(s3, cfg, inv, site, on_dump_part=cut)
    run = json.loads((site.state_dir / "backup" / "run.json").read_text())
    rep = run_backup(s3, cfg, inv, site)
    assert rep.resumed and rep.id == run["id"] and rep.db_parts_resumed == 1


def test_3_wipe_and_restore_serves_the_same_course_user_and_file(stack: Rehearsal,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _inv, cfg, s3, site = ctx(stack)
    before = data(stack, "read")
    assert before["course"] and before["user"] and before["file"]
    latest = manifest.list_ids(s3, cfg)[-1]
    # Dry run by default: nothing changes.
    assert cli(stack, "restore", "--manifest", latest, "--target-inventory", str(stack.env)) == 0
    assert "dry run" in capsys.readouterr().out
    # Another key cannot open the manifest's secrets: refused before anything changes.
    mp = pytest.MonkeyPatch()
    mp.setenv("MOODLEOPS_BACKUP_MANIFEST_KEY", Fernet.generate_key().decode())
    try:
        assert cli(stack, "restore", "--manifest", latest, "--target-inventory", str(stack.env), "--confirm") == ExitStatus.FAILED
    finally:
        mp.undo()
    assert "sealed with key" in capsys.readouterr().err
    assert data(stack, "read") == before
    # Disaster on the rehearsal (only): database and moodledata gone.
    psql(f'DROP DATABASE "{DB}" WITH (FORCE)')
    subprocess.run(["rm", "-rf", str(site.dataroot)], check=True)
    assert cli(stack, "restore", "--manifest", latest, "--target-inventory", str(stack.env), "--confirm") == 0
    after = data(stack, "read")
    assert after == before
    # The encrypted manifest was restored: its config.php, decrypted, root-only, beside the target's state.
    copy = site.state_dir / "backup" / f"config.php.{latest}"
    assert copy.stat().st_mode & 0o777 == 0o600 and site.secret("db_password") in copy.read_text()
    # Moodle serves them: the user logs in over HTTP and the file downloads intact.
    session = login(site.wwwroot, before["user"]["username"], PASSWORD)
    assert session.is_logged_in()
    got = session.http.get(before["file"]["url"], timeout=30)
    assert got.status_code == 200
    assert hashlib.sha1(got.content).hexdigest() == before["file"]["sha1"]
    admin = login(site.wwwroot, "admin", site.secret("admin_password"))
    page = admin.http.get(f"{site.wwwroot}/course/view.php?id={before['course']['id']}", timeout=30)
    assert page.status_code == 200 and before["course"]["fullname"] in page.text


def test_4_corrupted_object_is_detected_and_named(stack: Rehearsal, capsys: pytest.CaptureFixture[str]) -> None:
    _inv, cfg, s3, site = ctx(stack)
    before = data(stack, "read")
    sha1 = before["file"]["sha1"]
    key = cfg.key("blobs", sha1)
    good = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=b"bit rot" + good[7:])
    local = site.dataroot / "filedir" / sha1[:2] / sha1[2:4] / sha1
    local.unlink()        # so that the restore has to fetch it
    latest = manifest.list_ids(s3, cfg)[-1]
    capsys.readouterr()
    assert cli(stack, "restore", "--manifest", latest, "--target-inventory", str(stack.env), "--confirm") == 6
    err = capsys.readouterr().err
    assert key in err and "corrupted" in err
    # Nothing else was touched: the database still answers, maintenance is off.
    assert data(stack, "read")["course"] == before["course"]
    assert not (site.dataroot / "climaintenance.html").exists()
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=good)
    assert cli(stack, "restore", "--manifest", latest, "--target-inventory", str(stack.env), "--confirm") == 0
    assert hashlib.sha1(local.read_bytes()).hexdigest() == sha1


def test_5_school_export_restores_through_moodle(stack: Rehearsal, smtp: tuple[int, Inbox],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _inv, _cfg, _s3, site = ctx(stack)
    code = f"bk_{TAG}"
    capsys.readouterr()
    assert cli(stack, "export", "--school", code, "--format", "json") == 0
    rep = json.loads(capsys.readouterr().out)[0]
    assert sorted(c["shortname"] for c in rep["exported"]) == [f"bk-sch1-{TAG}", f"bk-sch2-{TAG}"]
    assert rep["failed"] == [] and rep["user_data"] is False
    assert smtp[1].received == []           # no --mail: nothing mailed
    # Rerun with --mail: nothing is redone, the referents get the links.
    assert cli(stack, "export", "--school", code, "--mail", "--format", "json") == 0
    again = json.loads(capsys.readouterr().out)[0]
    assert again["exported"] == [] and len(again["already"]) == 2
    assert again["mailed_to"] == [f"ref-{TAG}@example.invalid"] and len(smtp[1].received) == 1
    envelope = smtp[1].received[0]
    assert envelope.rcpt_tos == again["mailed_to"]
    text = message_from_bytes(envelope.content).get_payload(decode=True).decode()
    assert again["links_expire"] in text and all(url in text for url in again["links"].values())
    # The referents' links work and the checksums match.
    links = again["links"]
    sums_key = next(k for k in links if k.endswith("SHA256SUMS"))
    sums = requests.get(links[sums_key], timeout=30).text
    mbz_key = next(k for k in links if f"bk-sch1-{TAG}" in k)
    mbz = requests.get(links[mbz_key], timeout=60).content
    assert f"{hashlib.sha256(mbz).hexdigest()}  courses/{mbz_key.rsplit('/', 1)[-1]}" in sums
    man = json.loads(requests.get(links[next(k for k in links if k.endswith("manifest.json"))], timeout=30).text)
    assert man["complete"] and man["user_data"] is False and len(man["courses"]) == 2
    # Moodle restores it into a fresh course.
    path = site.dataroot / "temp" / f"restore-{TAG}.mbz"     # readable by the web user
    path.write_bytes(mbz)
    os.chmod(path, 0o644)
    cat = data(stack, "read")["school_category"]["id"]
    out = stack.moodle().run("admin/cli/restore_backup.php", f"--file={path}", f"--categoryid={cat}").stdout
    path.unlink()
    assert "Restored course ID" in out or "restored" in out.lower(), out
    # Moodle names the restored course "<fullname> copy 1" and renames its shortname.
    rows = psql(f"SELECT c.id FROM mdl_course c WHERE c.category = {cat} "
                f"AND c.fullname LIKE 'School course 1 {TAG}%'", db=DB).split()
    assert len(rows) == 2
    pages = psql(f"SELECT count(*) FROM mdl_page WHERE course = {max(map(int, rows))} AND name = 'Page {TAG}'", db=DB)
    assert pages.strip() == "1"
    # Reminder report: this school is exported, the others are pending near the end.
    capsys.readouterr()
    assert cli(stack, "export-status", "--as-of", "2029-08-01", "--format", "json") == 1
    status = {s["code"]: s for s in json.loads(capsys.readouterr().out)["schools"]}
    assert status[code]["exported"] and not status["ifsi_millau"]["exported"]
    assert cli(stack, "export-status", "--as-of", "2026-01-01") == 0


def test_6_pruning_keeps_every_blob_a_kept_manifest_needs(stack: Rehearsal) -> None:
    _inv, cfg0, s3, _site = ctx(stack)
    cfg = replace(cfg0, prefix=f"{TAG}-prune/", retention=Retention(daily=3, weekly=2, monthly=0))
    blobs = {f"{i:040x}": f"blob {i}".encode() for i in range(12)}
    for sha, body in blobs.items():
        s3.put_object(Bucket=cfg.bucket, Key=cfg.key("blobs", sha), Body=body)
    names = sorted(blobs)
    # Ten daily backups; backup n needs blobs n and n+1, and every backup needs blob 11.
    ids = [f"202901{d:02d}T020000Z" for d in range(1, 11)]
    for n, bid in enumerate(ids):
        need = [names[n], names[n + 1], names[11]]
        for area, ext in (("db", ".dump"), ("moodledata", ".tar.gz")):
            s3.put_object(Bucket=cfg.bucket, Key=cfg.key(area, bid + ext), Body=b"x")
        manifest.put(s3, cfg, {"format": manifest.FORMAT, "id": bid, "blobs": {"sha1": need},
                               "database": {"key": cfg.key("db", bid + ".dump")},
                               "moodledata": {"key": cfg.key("moodledata", bid + ".tar.gz")}})
    p = retention.plan(s3, cfg, grace=timedelta(0), now=datetime(2029, 1, 11, tzinfo=UTC))
    # (now: after the backups; a grace counts from a blob's last reference, and they are dated 2029)
    # Newest of each of the last 3 days, and of the last 2 ISO weeks (2029-01-07 ends week 1).
    assert set(p.keep) == {ids[9], ids[8], ids[7], ids[6]}
    retention.apply(s3, cfg, p)
    left = {k.rsplit("/", 1)[-1] for k in list_keys(s3, cfg, cfg.key("blobs", ""))}
    for bid in p.keep:
        m = manifest.get(s3, cfg, manifest.manifest_key(cfg, bid))
        assert set(m["blobs"]["sha1"]) <= left, bid
        assert list_keys(s3, cfg, m["database"]["key"])
    assert names[0] not in left and names[11] in left
    assert manifest.list_ids(s3, cfg) == sorted(p.keep)

    # The real backups: prune with daily=1 keeps the newest, and it stays restorable.
    assert cli(stack, "prune", "--grace-hours", "0", "--confirm") == 0
    real = manifest.list_ids(s3, cfg0)
    assert len(real) == 1
    m = manifest.get(s3, cfg0, manifest.manifest_key(cfg0, real[0]))
    present = {k.rsplit("/", 1)[-1] for k in list_keys(s3, cfg0, cfg0.key("blobs", ""))}
    assert set(manifest.iter_blobs(s3, cfg0, m)) <= present and list_keys(s3, cfg0, m["blobs"]["list"]["key"])


def test_6b_grace_counts_from_the_last_reference_not_the_upload(stack: Rehearsal) -> None:
    _inv, cfg0, s3, _site = ctx(stack)
    cfg = replace(cfg0, prefix=f"{TAG}-grace/", retention=Retention(daily=1, weekly=0, monthly=0))
    a, b, c = (f"{i:040x}" for i in (1, 2, 3))
    for sha in (a, b, c):
        s3.put_object(Bucket=cfg.bucket, Key=cfg.key("blobs", sha), Body=sha.encode())
    # Seen from 30 days on: every blob was uploaded "30 days ago"; B was still
    # referenced by a backup of yesterday (dropped by retention), A only 10 days ago.
    now = datetime.now(UTC) + timedelta(days=30)
    for age, sha in ((timedelta(days=10), a), (timedelta(days=1), b), (timedelta(hours=1), c)):
        bid = manifest.new_id(now - age)
        manifest.put(s3, cfg, {"format": manifest.FORMAT, "id": bid, "blobs": {"sha1": [sha]},
                               "database": {"key": cfg.key("db", bid + ".dump")},
                               "moodledata": {"key": cfg.key("moodledata", bid + ".tar.gz")}})
    p = retention.plan(s3, cfg, now=now, grace=timedelta(hours=48))
    assert len(p.keep) == 1 and len(p.drop) == 2
    assert p.blobs == [cfg.key("blobs", a)]         # B is inside its grace period: kept


def test_7_backup_while_content_is_deleted_and_trash_emptied_then_every_file_is_served(stack: Rehearsal) -> None:
    inv, cfg, s3, site = ctx(stack)
    old = data(stack, "read")["file"]                 # in the bucket since test 1
    new_tag = TAG + "n"
    stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "create", "tag": new_tag, "password": PASSWORD})
    new = stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "read", "tag": new_tag,
                                                                      "password": PASSWORD})["file"]
    assert not list_keys(s3, cfg, cfg.key("blobs", new["sha1"]))

    def delete_between_dump_and_listing() -> None:
        # The old file deleted and the trash emptied; then the new one deleted (it stays in trash).
        stack.moodle().tool(str(HERE / "backup_data.php"), payload={
            "mode": "delete", "tag": TAG, "delete": [TAG, new_tag], "purge_after": [TAG], "password": PASSWORD})
        assert not (site.dataroot / "filedir" / old["sha1"][:2] / old["sha1"][2:4] / old["sha1"]).exists()
        assert not (site.dataroot / "trashdir" / old["sha1"][:2] / old["sha1"][2:4] / old["sha1"]).exists()
        assert (site.dataroot / "trashdir" / new["sha1"][:2] / new["sha1"][2:4] / new["sha1"]).exists()

    time.sleep(1)
    rep = run_backup(s3, cfg, inv, site, after_dump=delete_between_dump_and_listing)
    m = manifest.get(s3, cfg, rep.manifest_key)
    checks = m["checks"]
    assert checks["missing_count"] == 0 and rep.missing == []
    assert checks["from_trashdir"] >= 1 and checks["only_in_bucket"] >= 1
    assert {old["sha1"], new["sha1"]} <= set(manifest.iter_blobs(s3, cfg, m))
    assert list_keys(s3, cfg, cfg.key("blobs", new["sha1"]))
    # Disaster, restore: Moodle (the dump's database) lists both files again and serves every file it lists.
    psql(f'DROP DATABASE "{DB}" WITH (FORCE)')
    subprocess.run(["rm", "-rf", str(site.dataroot)], check=True)
    assert cli(stack, "restore", "--manifest", m["id"], "--target-inventory", str(stack.env), "--confirm") == 0
    served = stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "check_files", "tag": TAG,
                                                                         "password": PASSWORD})
    assert served["checked"] > 0 and served["bad"] == []
    admin = login(site.wwwroot, "admin", site.secret("admin_password"))
    for f in (old, new):
        got = admin.http.get(f["url"], timeout=30)
        assert got.status_code == 200 and hashlib.sha1(got.content).hexdigest() == f["sha1"], f


def test_8_prune_during_a_backup_deletes_nothing_that_backup_needs(stack: Rehearsal,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    inv, cfg, s3, site = ctx(stack)
    tag = TAG + "p"
    stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "create", "tag": tag, "password": PASSWORD})
    blob = stack.moodle().tool(str(HERE / "backup_data.php"), payload={"mode": "read", "tag": tag,
                                                                       "password": PASSWORD})["file"]["sha1"]
    # In the bucket but in no manifest (as a killed run leaves it): the backup skips it, a prune would delete it.
    path = site.dataroot / "filedir" / blob[:2] / blob[2:4] / blob
    s3.put_object(Bucket=cfg.bucket, Key=cfg.key("blobs", blob), Body=path.read_bytes())
    idx = BlobIndex.for_bucket(site.state_dir, cfg)      # ... and in this host's index, as that run recorded it
    idx.rebuild(s3, cfg)
    idx.close()
    capsys.readouterr()

    def prune_elsewhere() -> None:
        assert cli(stack, "prune", "--grace-hours", "0", "--confirm") == 0

    time.sleep(1)
    rep = run_backup(s3, cfg, inv, site, before_manifest=prune_elsewhere)
    out = capsys.readouterr().out
    assert "in progress elsewhere" in out and rep.id in out
    m = manifest.get(s3, cfg, rep.manifest_key)
    present = {k.rsplit("/", 1)[-1] for k in list_keys(s3, cfg, cfg.key("blobs", ""))}
    needed = set(manifest.iter_blobs(s3, cfg, m))
    assert blob in needed and needed <= present
    assert rep.blobs.skipped >= 1 and m["checks"]["prune_overlapped"] is True
    # Once the backup is done, a prune runs normally and keeps what the newest backup needs.
    assert cli(stack, "prune", "--grace-hours", "0", "--confirm") == 0
    assert "in progress" not in capsys.readouterr().out
    present = {k.rsplit("/", 1)[-1] for k in list_keys(s3, cfg, cfg.key("blobs", ""))}
    assert needed <= present


def test_9_backup_run_waits_for_nobody_while_the_platform_lock_is_held(stack: Rehearsal,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """One lock for upgrades, backups, restores and incidents: a backup started
    while another holds it is refused at once, naming the holder, changing nothing."""
    _inv, cfg, s3, site = ctx(stack)
    before = manifest.list_ids(s3, cfg)
    capsys.readouterr()
    with platform_lock(site, "pytest: an upgrade"):
        assert cli(stack, "run") == 3
    err = capsys.readouterr().err
    assert "platform lock is held" in err and "pytest: an upgrade" in err
    assert manifest.list_ids(s3, cfg) == before
    assert not list_keys(s3, cfg, cfg.key("markers", "inprogress", ""))
