"""A moto S3 server and an SMTP relay (aiosmtpd) of a test's own, on loopback:
what tests/backup's modules start for their backups, exports and mailings."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
def moto_s3(bucket: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """moto in server mode on `host` (loopback; the rehearsal: its bridge's
    gateway, this machine's side) with `bucket` made; test credentials in the
    environment (and none of the operator's: profile, session, endpoint override)."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{host}:{port}"
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


def relay_tls(d: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of the test's own and a certificate for 127.0.0.1 signed by it:
    (the CA's PEM file, the relay's server context)."""
    now = datetime.now(UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, encipher_only=False,
                                              decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moodleops test relay CA")])
    ca = cert("moodleops test relay CA", ca_key, ca_name, ca_key, True)
    ca_file, chain, key_file = d / "relay-ca.pem", d / "relay.pem", d / "relay.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(cert("127.0.0.1", key, ca_name, ca_key, False).public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain, key_file)
    return ca_file, server


@contextmanager
def smtp_relay(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, Inbox]]:
    """With `tls`: the relay offers STARTTLS and accepts mail only after it."""
    inbox, port = Inbox(), free_port()
    extra: dict[str, Any] = {"tls_context": tls, "require_starttls": True} if tls is not None else {}
    ctl = Controller(inbox, hostname="127.0.0.1", port=port, **extra)
    ctl.start()
    try:
        yield port, inbox
    finally:
        ctl.stop()
