"""A moto S3 server and an SMTP relay (aiosmtpd) of a test's own, on loopback:
what tests/backup's modules start for their backups, exports and mailings."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any

import boto3
import pytest
import requests
from aiosmtpd.controller import Controller
from prom_loopback import free_port

REGION = "eu-west-3"


def wait_http(url: str, attempts: int = 300) -> None:
    """Until `url` answers at all (a busy machine: a server may take a while)."""
    for _ in range(attempts):
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """moto in server mode with `bucket` made; test credentials in the environment
    (and none of the operator's: profile, session, endpoint override)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "moodleops-test")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "moodleops-test")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION", "MOODLEOPS_BACKUP_S3_ENDPOINT_URL"):
        mp.delenv(name, raising=False)
    try:
        wait_http(url)
        boto3.client("s3", endpoint_url=url, region_name=REGION).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield url
    finally:
        mp.undo()
        proc.terminate()
        proc.wait(timeout=10)


class Inbox:
    """aiosmtpd handler: every envelope the relay accepted."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope)
        return "250 OK"

    @property
    def messages(self) -> list[tuple[str, list[str], Message]]:
        return [(e.mail_from, list(e.rcpt_tos), message_from_bytes(e.content)) for e in self.received]


@contextmanager
def smtp_relay() -> Iterator[tuple[int, Inbox]]:
    inbox, port = Inbox(), free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, inbox
    finally:
        ctl.stop()
