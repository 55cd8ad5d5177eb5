"""The command-line contract without the stack: the table, the translation of
library faults into one line, the byte formatter and the tables."""

from __future__ import annotations

import errno
import smtplib
import socket
import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moodleops.capacity.errors import CapacityError

from moodleops.cli import main
from moodleops.console import table_lines
from moodleops.errors import EXIT_TABLE, DependencyError, ExitStatus, FilesystemError, S3Error, SmtpError
from moodleops.faults import database_error, playbook_ssh_error, s3_error, smtp_error, translate
from moodleops.units import format_bytes


def test_every_status_is_in_the_table_once() -> None:
    assert [s for s, _ in EXIT_TABLE] == list(ExitStatus)


def test_every_area_epilog_uses_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    # Any "exit status" a command documents is a status of the table, with its meaning.
    from moodleops.cli import build_parser

    parser = build_parser()
    areas = next(a for a in parser._actions if a.dest == "area")
    known = {int(s) for s in ExitStatus}
    for area in areas.choices.values():
        commands = next(a for a in area._actions if a.dest == "command")
        for cmd in commands.choices.values():
            text = cmd.epilog or ""
            if "exit status" not in text:
                continue
            block = text.split("exit status", 1)[1].split("\n\n")[0]
            codes = [int(line.split()[0]) for line in block.splitlines()[1:] if line.strip()[:1].isdigit()]
            assert set(codes) <= known, (cmd.prog, codes)


def test_library_faults_name_the_dependency() -> None:
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")
    assert "access denied (AccessDenied on PutObject)" in str(s3_error(denied, "s3://b/p"))
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"RetryAttempts": 4}}, "UploadPart")
    assert "throttling (SlowDown on UploadPart after 5 attempts)" in str(s3_error(slow))
    down = s3_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket?x=1"))
    assert down is not None and down.address == "http://127.0.0.1:9"
    err = database_error(RuntimeError('connection to server at "10.0.0.5", port 5433 failed: FATAL:  password '
                                      'authentication failed for user "moodleops_ro"'))
    assert err.address == "10.0.0.5:5433" and err.problem == "password rejected"


def test_an_area_error_raised_from_a_library_fault_is_that_fault() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/moodleops/x")
        except OSError:
            raise CapacityError("cannot write the history") from None
    except CapacityError as exc:
        got = translate(exc)
    assert isinstance(got, FilesystemError) and got.status == ExitStatus.FILESYSTEM
    assert str(got).startswith("filesystem /var/lib/moodleops/x: no space left")
    assert translate(CapacityError("--year 1999 is not valid")).status == ExitStatus.USAGE


def test_notes_say_what_was_done() -> None:
    exc = ClientError({"Error": {"Code": "NoSuchBucket", "BucketName": "b"}}, "HeadBucket")
    exc.add_note("dump uploaded, blobs not started: re-run resumes")
    got = translate(exc, {S3Error: "s3://b/ at http://127.0.0.1:9"})
    assert isinstance(got, DependencyError)
    assert got.line() == ("S3 s3://b/ at http://127.0.0.1:9: bucket b does not exist (NoSuchBucket on HeadBucket) "
                          "(check backup_s3_bucket and backup_s3_region, or create the bucket: versioned, in the EU); "
                          "dump uploaded, blobs not started: re-run resumes")


def test_ssh_faults_are_told_apart() -> None:
    def one(msg: str, addresses: dict[str, str] | None = None) -> str:
        return str(playbook_ssh_error([f"fatal: [web1]: UNREACHABLE! => {msg}"], {"web1": 1}, addresses))
    assert "SSH 10.0.0.7:22 (host web1): connection refused" in one(
        "ssh: connect to host 10.0.0.7 port 22: Connection refused")
    assert "SSH 10.0.0.7:2222 (host web1): the key was rejected" in one(
        "root@10.0.0.7: Permission denied (publickey).", {"web1": "10.0.0.7:2222"})
    changed = one("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! Offending ED25519 key in /k/known_hosts:3 "
                  "Host key for [10.0.0.7]:2222 has changed and you have requested strict checking.",
                  {"web1": "10.0.0.7:2222"})
    assert "the host key changed: /k/known_hosts line 3 holds another key for [10.0.0.7]:2222" in changed
    assert "ssh-keygen -R '[10.0.0.7]:2222' -f /k/known_hosts" in changed
    assert "host key is unknown" in one("No ED25519 host key is known for 10.0.0.7 and you have requested strict "
                                        "checking. Host key verification failed.", {"web1": "10.0.0.7:22"})
    assert playbook_ssh_error(["ok"], {"web1": 0}) is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_smtp_relay_down_is_one_line() -> None:
    # No command sends mail yet: the translation is ready for the first that does.
    port = _closed_port()
    with pytest.raises(OSError) as caught:
        smtplib.SMTP("127.0.0.1", port, timeout=5)
    err = smtp_error(caught.value, f"127.0.0.1:{port}", done="no mail was sent")
    assert err is not None and err.status == ExitStatus.DEPENDENCY
    assert err.line() == (f"SMTP 127.0.0.1:{port}: connection refused (check that the relay runs and listens "
                          "there: monitoring_smtp_smarthost (host:port)); no mail was sent")


def test_smtp_relay_answers_are_told_apart() -> None:
    """A relay on loopback that greets, then refuses every recipient (550), and one
    that closes the connection after its greeting."""
    def serve(listener: socket.socket, script: list[bytes | None]) -> None:
        conn, _ = listener.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"220 relay.test ESMTP\r\n")
            for answer in script:
                if not f.readline():
                    return
                if answer is None:
                    return          # drop the connection
                conn.sendall(answer)

    def relay(script: list[bytes | None]) -> tuple[int, threading.Thread, socket.socket]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        t = threading.Thread(target=serve, args=(listener, script), daemon=True)
        t.start()
        return int(listener.getsockname()[1]), t, listener

    port, t, listener = relay([b"250 relay.test\r\n", b"250 ok\r\n", b"550 5.1.1 no such user\r\n",
                               b"250 ok\r\n", b"221 bye\r\n"])
    with listener, pytest.raises(smtplib.SMTPRecipientsRefused) as refused, \
            smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.sendmail("moodle@example.invalid", ["nobody@example.invalid"], "Subject: x\r\n\r\nx")
    t.join(5)
    err = smtp_error(refused.value, f"127.0.0.1:{port}")
    assert err is not None and "recipients refused: nobody@example.invalid (550)" in err.line()

    port, t, listener = relay([None])
    with listener, pytest.raises(smtplib.SMTPServerDisconnected) as dropped, \
            smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.ehlo()
    t.join(5)
    err = translate(dropped.value, {SmtpError: f"127.0.0.1:{port}"})
    assert err is not None and err.line().startswith(f"SMTP 127.0.0.1:{port}: the relay closed the connection")
    assert smtp_error(ValueError("not a mail fault"), "x:25") is None


def test_bytes_are_decimal() -> None:
    assert format_bytes(999) == "999 B"
    assert format_bytes(41_000_000_000) == "41.0 GB"
    assert format_bytes(1_500_000) == "1.5 MB"


def test_tables_are_plain_text() -> None:
    lines = table_lines(("code", "GB"), [("a", "1"), ("bb", "22")], numeric={1}, total=("total", "23"))
    assert lines == ["code    GB", "----------", "a        1", "bb      22", "----------", "total   23"]


def test_help_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for status, text in EXIT_TABLE:
        assert f"  {int(status):<3} {text.split()[0]}" in out


def test_upgrade_recover_refuses_options_of_a_new_run(capsys: pytest.CaptureFixture[str]) -> None:
    # Checked before the inventory is read: the recovery finishes the killed run as it was.
    assert main(["--inventory", "local", "platform", "upgrade", "--recover", "--message", "x"]) == 2
    assert "--recover finishes an interrupted run as it was" in capsys.readouterr().err
    assert main(["--inventory", "local", "platform", "upgrade", "--delay", "1441"]) == 2
    assert "--delay 1441 is not valid" in capsys.readouterr().err
