"""Demonstration 7 of #13: a platform backup taken from the rehearsal to S3
(moto on the operator's side of the bridge, where backup_s3_endpoint_url
points) and restored onto it. From the operator's machine `moodleops -i
rehearsal backup run | list | restore` run on the job host (web1) through the
launcher the backup_schedule role installed there with its environment (no
secret from here); the dump is taken from db1 over the network, filedir read
over the network filesystem. After the restore Moodle serves, through lb1 and
from both nodes, the file uploaded before the backup and not the one uploaded
after it, and the replica (db2) follows the restored database."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from s3_smtp_loopback import REGION, moto_s3

from moodleops.backup.config import backup_config
from moodleops.site import site_of

from .rehearsal_run import INV, WWWROOT, Platform, admin_session, moodleops, psql, secret, upload_private_file

CFG = backup_config(INV)
SITE = site_of(INV)


@pytest.fixture(scope="module")
def bucket() -> Iterator[object]:
    """moto where the rehearsal's inventory says its S3 is (this machine's address on the bridge)."""
    endpoint = urlsplit(str(INV.vars["backup_s3_endpoint_url"]))
    assert endpoint.hostname and endpoint.port
    with moto_s3(CFG.bucket, endpoint.hostname, endpoint.port) as url:
        yield boto3.client("s3", endpoint_url=url, region_name=REGION)


def _files_named(name: str, db_host: str) -> int:
    """Rows of Moodle's files table named `name`, read from web1 on `db_host` (read-only user)."""
    out = psql("web1", f"SELECT count(*) FROM {SITE.db_prefix}files WHERE filename = '{name}'",
               user=SITE.db_ro_user, password="db_ro_password", db_host=db_host)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _served(platform: Platform, url: str) -> dict[str, tuple[int, bytes]]:
    """What each web node answers for `url` to a new admin session through lb1."""
    session = admin_session(platform.ca)
    answers: dict[str, tuple[int, bytes]] = {}
    for _ in range(8):
        resp = session.http.get(url, timeout=60)
        answers[resp.headers["X-Served-By"]] = (resp.status_code, resp.content)
    assert set(answers) == {"web1", "web2"}, answers.keys()
    return answers


def _out_of_maintenance(platform: Platform, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        nodes = {}
        for _ in range(4):
            resp = requests.get(f"{WWWROOT}/login/index.php", verify=str(platform.ca), timeout=30)
            nodes[resp.headers.get("X-Served-By")] = resp.status_code
        if nodes == {"web1": 200, "web2": 200} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert nodes == {"web1": 200, "web2": 200}, nodes


def test_backup_from_the_rehearsal_restored_onto_it(platform: Platform, bucket: object) -> None:
    session = admin_session(platform.ca)
    run_id = uuid.uuid4().hex[:8]
    before, after = f"before-backup-{run_id}.txt", f"after-backup-{run_id}.txt"
    kept = f"kept {uuid.uuid4()}\n".encode()
    kept_url, _ = upload_private_file(session, before, kept)

    run = moodleops("-i", INV.env, "backup", "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "running `backup run` on web1 over SSH" in run.stderr, run.stderr
    listed = moodleops("-i", INV.env, "backup", "list", "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    backups = json.loads(listed.stdout)
    assert len(backups) == 1 and backups[0]["blobs"] >= 1, backups
    # A bucket reader learns no password: the manifest's secrets are sealed on web1.
    raw = gzip.decompress(bucket.get_object(Bucket=CFG.bucket, Key=backups[0]["key"])["Body"].read())  # type: ignore[attr-defined]
    assert secret("db_password").encode() not in raw and b"fernet" in raw

    gone = f"gone {uuid.uuid4()}\n".encode()
    gone_url, _ = upload_private_file(session, after, gone)
    assert _files_named(after, SITE.db_host) == 1

    dry = moodleops("-i", INV.env, "backup", "restore", "--manifest", backups[0]["id"], "--target-inventory", INV.env)
    assert dry.returncode == 0 and "dry run: nothing changed" in dry.stdout, dry.stdout + dry.stderr
    restored = moodleops("-i", INV.env, "backup", "restore", "--manifest", backups[0]["id"], "--target-inventory",
                         INV.env, "--confirm")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "Moodle serves the restored data" in restored.stdout, restored.stdout

    # The maintenance flag's removal reaches the other node through the network
    # filesystem's attribute cache: within seconds.
    _out_of_maintenance(platform, within=30)
    for node, (status, body) in _served(platform, kept_url).items():
        assert status == 200 and body == kept, (node, status, body[:200])
    for node, (status, body) in _served(platform, gone_url).items():
        assert status == 404 and gone not in body, (node, status)
    # The replica streams the restored database (a file row back, one gone).
    deadline = time.monotonic() + 60
    while _files_named(after, SITE.db_read_host) and time.monotonic() < deadline:
        time.sleep(2)
    assert (_files_named(before, SITE.db_read_host), _files_named(after, SITE.db_read_host)) == (1, 0)
