"""Library faults -> the one-line errors of `moodleops.errors`.

Each dependency's client library fails its own way (botocore, psycopg,
requests, OSError, subprocess). The builders here say, for each, what failed
in words an operator acts on and what to check next; `translate` is the
fallback the top-level command applies to anything a command let through.
Libraries are imported lazily: `moodleops --help` must not pay for boto3.
"""

from __future__ import annotations

import errno
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from moodleops.errors import (
    BusyError,
    DatabaseError,
    DependencyError,
    ExitStatus,
    FilesystemError,
    MoodleHttpError,
    OperationFailed,
    OpsError,
    S3Error,
    SmtpError,
    SshError,
    UsageError,
    oneline,
)

# -- database (psycopg) ---------------------------------------------------------------

# user@host:port/dbname, as the areas' messages name a database target.
_DB_TARGET = re.compile(r"\b[\w.-]+@[\w.:\[\]-]+:\d+/[\w-]+")
# moodledb.Target.describe(): "database <db> on <host>:<port> as <role>".
_DB_DESCRIBED = re.compile(r"\bdatabase ([\w-]+) on ([\w.:\[\]-]+:\d+) as ([\w.-]+)")
_PG_AT = re.compile(r'connection to server (?:at "([^"]+)"(?:[^,]*), port (\d+)|on socket "([^"]+)")')


def database_error(exc: BaseException, address: str = "", *, password_from: str = "") -> DatabaseError:
    """A PostgreSQL fault: down, password rejected, a grant missing, a statement timeout."""
    text = oneline(exc)
    if not address:
        m = _PG_AT.search(text)
        if m:
            address = f"{m.group(1)}:{m.group(2)}" if m.group(1) else m.group(3)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    low = text.lower()
    if "password authentication failed" in low or sqlstate == "28P01":
        return DatabaseError(address, "password rejected",
                             f"the role's password {password_from or 'in the secrets directory'}, or "
                             "MOODLEOPS_DB_RO_PASSWORD / MOODLEOPS_DB_PASSWORD")
    if sqlstate == "42501" or "permission denied" in low:
        what = getattr(getattr(exc, "diag", None), "message_primary", None) or text
        return DatabaseError(address, f"the role lacks a grant: {what}",
                             "the GRANTs of that role: `moodleops platform up --tags postgresql` sets them")
    if sqlstate == "57014" or "statement timeout" in low:
        return DatabaseError(address, "a statement hit the statement timeout",
                             "the database load in pg_stat_activity, or the timeout, then re-run")
    if "pg_hba.conf" in low:
        return DatabaseError(address, "this role may not log in from here (no pg_hba.conf entry)",
                             "pg_hba.conf on the database host: the postgresql role writes it")
    if sqlstate.startswith("28") or ("role" in low and "does not exist" in low):
        return DatabaseError(address, f"login refused: {text[:200]}", "the role name and pg_hba.conf")
    if "refused" in low or "timeout expired" in low or "could not connect" in low or "no route" in low \
            or "connection failed" in low or "server closed the connection" in low:
        return DatabaseError(address, "down or unreachable (connection refused or timed out)",
                             "that PostgreSQL runs and listens there: moodle_db_host, moodle_db_port")
    if "does not exist" in low:
        return DatabaseError(address, text[:200], "moodle_db_name and moodle_db_prefix of the inventory")
    return DatabaseError(address, text[:300], "the PostgreSQL log on the database host")


# -- HTTP (requests) -----------------------------------------------------------------

# What Moodle serves while maintenance is on: climaintenance.html (CLI maintenance)
# or the maintenance_message page (admin setting), both with HTTP 503.
_MAINTENANCE = re.compile(r"climaintenance|maintenance mode|undergoing maintenance|maintenancemode|"
                          r"id=\"maintenance", re.IGNORECASE)


def http_error(kind: type[DependencyError], url: str, exc: BaseException | None = None, *,
               status: int | None = None, body: str = "", check: str = "",
               done: str | None = None) -> DependencyError:
    """An HTTP dependency that refused, timed out, or answered an error page."""
    err = _http_error(kind, url, exc, status=status, body=body, check=check)
    if done and not err.done:
        err.done = oneline(done)
    return err


def _http_error(kind: type[DependencyError], url: str, exc: BaseException | None = None, *,
                status: int | None = None, body: str = "", check: str = "") -> DependencyError:
    if exc is not None:
        name = type(exc).__name__
        low = oneline(exc).lower()
        if "timeout" in name.lower() or "timed out" in low:
            problem = "no answer in time (timeout)"
        elif "refused" in low or "connection" in name.lower():
            problem = "connection refused or unreachable"
        else:
            problem = f"{name}: {oneline(exc)[:200]}"
        return kind(url, problem, check or "that the service runs and listens at that address")
    if kind is MoodleHttpError and _MAINTENANCE.search(body or ""):
        return kind(url, f"Moodle is in maintenance mode (HTTP {status})",
                    "who switched maintenance on; `moodleops platform maintenance off` when the work is done")
    return kind(url, f"answered HTTP {status}", check or "the service's error log")


def moodle_http_preflight(wwwroot: str, *, timeout: float = 10, ca_bundle: Path | None = None) -> None:
    """Raise MoodleHttpError unless Moodle's login page answers normally: refused,
    a 5xx answer and the maintenance page are told apart. `ca_bundle`: what to
    trust for `wwwroot` (moodle_ca_bundle)."""
    import requests

    from moodleops.webclient import trusting

    url = wwwroot.rstrip("/") + "/login/index.php"
    check = "nginx and php-fpm on the web node: service nginx status, service php*-fpm status"
    try:
        resp = trusting(ca_bundle).get(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise http_error(MoodleHttpError, wwwroot, exc, check=check) from exc
    if resp.status_code >= 500 or _MAINTENANCE.search(resp.text[:20000]) and resp.status_code != 200:
        raise http_error(MoodleHttpError, wwwroot, status=resp.status_code, body=resp.text[:20000],
                         check="the nginx and php-fpm error logs of the web node")
    if resp.status_code >= 400 or 'name="logintoken"' not in resp.text:
        raise MoodleHttpError(wwwroot, f"{url} answered HTTP {resp.status_code} without Moodle's login form",
                              "moodle_wwwroot in the inventory and the nginx vhost")


# -- S3 (botocore) -------------------------------------------------------------------

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden",
           "AllAccessDisabled", "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchBucket", "404", "NotFound"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503",
              "ServiceUnavailable", "TooManyRequests", "RequestThrottled"}


def s3_error(exc: BaseException, address: str = "") -> S3Error | None:
    """An S3 fault (botocore): unreachable, access denied, missing bucket, throttled; None if not one."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError, bx.ProxyConnectionError)):
        from urllib.parse import urlsplit

        endpoint = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url", "")))
        endpoint_text = f"{endpoint.scheme}://{endpoint.netloc}" if endpoint.netloc else ""
        return S3Error(address or endpoint_text, f"endpoint unreachable ({type(exc).__name__})",
                       "that the endpoint is up and reachable: backup_s3_endpoint_url or "
                       "MOODLEOPS_BACKUP_S3_ENDPOINT_URL, empty means AWS")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return S3Error(address, "no credentials found",
                       "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, for this shell")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        op = exc.operation_name
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
        if code in _DENIED:
            return S3Error(address, f"access denied ({code} on {op})",
                           "the credentials, AWS_ACCESS_KEY_ID or AWS_PROFILE, and the bucket policy")
        if code in _MISSING:
            bucket = err.get("BucketName") or ""
            return S3Error(address, f"bucket {bucket + ' ' if bucket else ''}does not exist ({code} on {op})",
                           "backup_s3_bucket and backup_s3_region, or create the bucket: versioned, in the EU")
        if code in _THROTTLED:
            tries = f" after {attempts + 1} attempts" if isinstance(attempts, int) else ""
            return S3Error(address, f"the service is throttling ({code} on {op}{tries})",
                           "the provider's request rate limits, then re-run later: runs resume")
        return S3Error(address, f"{code} on {op}: {oneline(err.get('Message', ''))[:200]}",
                       "the provider's documentation of that error code")
    if isinstance(exc, bx.BotoCoreError):
        return S3Error(address, f"{type(exc).__name__}: {oneline(exc)[:200]}", "the S3 configuration")
    return None


# -- SSH (OpenSSH's client, directly or through Ansible) ---------------------------

_UNREACHABLE = re.compile(r"fatal: \[([^\]]+)\]: UNREACHABLE!")
# OpenSSH names a non-default port as [host]:port in its host-key messages.
_KEY_FOR = re.compile(r"(?:Host key for|host key is known for) (\[[^\]]+\]:\d+|[\w.:-]+)")
_OFFENDING = re.compile(r"Offending \S+ key in (\S+?):(\d+)")
_KNOWN_HOSTS_IN = re.compile(r"Add correct host key in (\S+) to")


def _known_hosts_entry(address: str) -> str:
    """host:port -> the name known_hosts files it under ([host]:port unless port 22)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return address
    return host if port == "22" else f"[{host}]:{port}"


def ssh_fault(address: str, message: str, *, known_hosts: str = "", user: str = "",
              identity: str = "", done: str | None = None) -> SshError:
    """OpenSSH's client failed to reach `address` (host:port, or a name): refused, no
    answer, the key rejected, the host key changed or unknown. `known_hosts`,
    `user` and `identity` are the files and user the caller gave ssh, named in the check."""
    text = oneline(message)
    low = text.lower()
    entry = _known_hosts_entry(address)
    if "host identification has changed" in low or "has changed and you have requested strict" in low:
        m = _OFFENDING.search(text)
        where = f"{m.group(1)} line {m.group(2)}" if m else (known_hosts or "~/.ssh/known_hosts")
        kh = m.group(1) if m else (known_hosts or "~/.ssh/known_hosts")
        return SshError(address, f"the host key changed: {where} holds another key for {entry}",
                        f"that the host was really reinstalled (compare its key out of band), then "
                        f"ssh-keygen -R '{entry}' -f {kh}", done=done)
    if "host key verification failed" in low or "no " in low and "host key is known" in low:
        m = _KNOWN_HOSTS_IN.search(text)
        kh = known_hosts or (m.group(1) if m else "~/.ssh/known_hosts")
        return SshError(address, f"the host key is unknown: {kh} has no key for {entry}",
                        f"add the host's key to {kh}, read from the host itself (never trusted on first use)",
                        done=done)
    if "permission denied" in low or "too many authentication failures" in low:
        who = f"{user}@" if user else ""
        key = f"the key {identity}" if identity else "the key this controller offers"
        host, _, port = address.rpartition(":") if address.rpartition(":")[2].isdigit() else (address, "", "22")
        return SshError(address, "the key was rejected (permission denied)",
                        f"that {key} is in the authorized_keys of {user or 'the user'} on the host, and the "
                        f"user (ansible_user / --ssh-user): ssh -v -p {port} {who}{host}", done=done)
    if "refused" in low:
        return SshError(address, "connection refused", "that sshd runs on the host and listens on that port "
                        "(ansible_port / --ssh-port)", done=done)
    if "timed out" in low or "no route" in low or "timeout" in low:
        return SshError(address, "no answer (timed out)", "the network path and the address (ansible_host)",
                        done=done)
    if "could not resolve" in low or "name or service not known" in low:
        return SshError(address, "the host name does not resolve", "ansible_host in the inventory", done=done)
    return SshError(address, text[:200] or "ssh failed without a message",
                    f"ssh -v to {address} from this controller", done=done)


def ssh_error(host: str, message: str) -> SshError:
    """A host Ansible could not reach: refused, key rejected, host key changed."""
    return ssh_fault(host, message)


def playbook_ssh_error(output: list[str], unreachable: Mapping[str, int],
                       addresses: Mapping[str, str] | None = None) -> SshError | None:
    """The first unreachable host of a playbook run, from Ansible's own output;
    `addresses` maps inventory host names to host:port (Host.ssh_address)."""
    hosts = [h for h, n in unreachable.items() if n]
    if not hosts:
        return None
    addresses = addresses or {}
    for i, line in enumerate(output):
        m = _UNREACHABLE.search(line)
        if m:
            # Ansible prints the reason after the marker, on one line or as a YAML block.
            # (OpenSSH's host-key banner alone is 15 lines: read up to the recap.)
            text = oneline(" ".join(output[i:i + 60])).replace("\\r\\n", " ")
            where = re.search(r"connect to host (\S+) port (\d+)", text)
            name = m.group(1)
            address = f"{where.group(1)}:{where.group(2)}" if where else addresses.get(name, "")
            reason = text[m.end() - m.start():].split("PLAY RECAP")[0].strip()
            err = ssh_fault(address or name, reason)
            if address and name not in address:
                err.address = f"{address} (host {name})"
            return err
    return ssh_fault(addresses.get(hosts[0], hosts[0]), "unreachable")


# -- SMTP (smtplib) --------------------------------------------------------------------

SMTP_CHECK = "that the relay runs and listens there: monitoring_smtp_smarthost (host:port)"


def smtp_error(exc: BaseException, address: str, *, done: str | None = None) -> SmtpError | None:
    """A mail relay fault (smtplib or the socket under it): refused, no answer, dropped,
    authentication or an address refused; None if `exc` is not one. `address` is host:port."""
    import smtplib
    import socket

    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SmtpError(address, f"authentication refused ({exc.smtp_code})",
                         "the relay's user and password given to this host", done=done)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{rcpt} ({code})" for rcpt, (code, _msg) in sorted(exc.recipients.items()))
        return SmtpError(address, f"recipients refused: {refused[:200]}",
                         "the addresses (referents, monitoring_sysadmin_emails) and the relay's rules", done=done)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return SmtpError(address, f"sender {exc.sender} refused ({exc.smtp_code})",
                         "monitoring_smtp_from and the relay's rules for that sender", done=done)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return SmtpError(address, "the relay closed the connection", f"the relay's log; {SMTP_CHECK}", done=done)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return SmtpError(address, f"the relay answered {exc.smtp_code}: {oneline(text)[:150]}",
                         "the relay's log for that answer", done=done)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return SmtpError(address, "no answer (timed out)", SMTP_CHECK, done=done)
    if isinstance(exc, ConnectionRefusedError):
        return SmtpError(address, "connection refused", SMTP_CHECK, done=done)
    if isinstance(exc, socket.gaierror):
        return SmtpError(address, "the relay's name does not resolve", SMTP_CHECK, done=done)
    if isinstance(exc, (smtplib.SMTPException, ConnectionError)) or \
            isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return SmtpError(address, f"{type(exc).__name__}: {oneline(exc)[:150]}", SMTP_CHECK, done=done)
    return None


# -- local filesystem (OSError) -------------------------------------------------------

_FS = {
    errno.ENOSPC: ("no space left", "free space on that filesystem: df -h"),
    errno.EDQUOT: ("disk quota exceeded", "the quota of that filesystem"),
    errno.EROFS: ("read-only filesystem", "why it is mounted read-only: mount, dmesg"),
    errno.EACCES: ("permission denied", "the owner and mode of that path with ls -ld, and which user runs this"),
    errno.EPERM: ("operation not permitted", "the attributes of that path with lsattr, and which user runs this"),
}


def filesystem_error(exc: BaseException) -> FilesystemError | None:
    if not isinstance(exc, OSError) or exc.errno not in _FS:
        return None
    problem, check = _FS[exc.errno]
    path = exc.filename if exc.filename is not None else ""
    return FilesystemError(str(path), problem, check)


# -- the fallback ---------------------------------------------------------------------

def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _library_fault(exc: BaseException, addresses: Mapping[type[DependencyError], str]) -> OpsError | None:
    fs = filesystem_error(exc)
    if fs is not None:
        return fs
    mod = type(exc).__module__ or ""
    if mod.startswith(("botocore", "boto3")):
        return s3_error(exc, addresses.get(S3Error, ""))
    if mod.startswith("psycopg"):
        return database_error(exc, addresses.get(DatabaseError, ""))
    if mod == "smtplib":
        return smtp_error(exc, addresses.get(SmtpError, ""))
    if mod.startswith(("requests", "urllib3")):
        url = getattr(getattr(exc, "request", None), "url", "") or ""
        kind = next((k for k, a in addresses.items() if a and url.startswith(a)), MoodleHttpError)
        return http_error(kind, url or addresses.get(kind, ""), exc)
    return None


def _area_error(exc: BaseException) -> OpsError | None:
    """The areas' own error types, by what they mean in the exit table."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = oneline(exc)
    if names & {"InventoryError", "IncidentError", "CapacityError", "SiteError", "LoadtestError",
                "ArgumentTypeError"}:
        return UsageError(text)
    if any(n.endswith("LockBusy") for n in names) or "PlatformHeld" in names:
        return BusyError(text)
    if "LoginFailed" in names:
        return MoodleHttpError("", text, "the admin password and the login page")
    if "MoodleDBError" in names:
        return DatabaseError("", text, "moodle_db_* settings of the inventory and the read-only role")
    if "ScanError" in names:
        return DatabaseError("", text, "that PostgreSQL runs and the read-only role can read Moodle's tables")
    if "BackupError" in names:
        return OperationFailed(text)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return UsageError(f"{exc.filename} does not exist")
    return None


def translate(exc: BaseException, addresses: Mapping[type[DependencyError], str] | None = None) -> OpsError | None:
    """The one-line error for `exc`, or None for a bug. A library fault anywhere in
    the chain (an area's error raised `from` it) names the dependency; notes added
    with `exc.add_note(...)` say what had been done."""
    addresses = addresses or {}
    found: OpsError | None = exc if isinstance(exc, OpsError) else None
    if found is None or type(found) is OpsError or isinstance(found, OperationFailed):
        for link in _chain(exc):
            lib = _library_fault(link, addresses)
            if lib is not None:
                found = lib
                break
    if found is None:
        found = _area_error(exc)
    if found is None:
        return None
    notes = [n for link in _chain(exc) for n in getattr(link, "__notes__", [])]
    if notes and not found.done:
        found.done = oneline("; ".join(notes))
    if isinstance(found, DatabaseError) and "@" not in found.address:
        # The areas name the full target (role@host:port/db); libpq only host and port.
        for link in _chain(exc):
            m = _DB_TARGET.search(str(link))
            d = _DB_DESCRIBED.search(str(link))
            if m or d:
                found.address = m.group(0) if m else f"{d.group(3)}@{d.group(2)}/{d.group(1)}"
                break
    if isinstance(found, DependencyError) and not found.address:
        found.address = addresses.get(type(found), "")
    return found



def report(exc: BaseException, *, debug: bool = False,
           addresses: Mapping[type[DependencyError], str] | None = None) -> int:
    """Print the one line for `exc` on stderr (the traceback first with --debug);
    return its exit status from the table."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    err = translate(exc, addresses)
    if err is None:
        hint = "" if debug else " (run again with --debug for the traceback)"
        notes = "".join(f"; {oneline(n)}" for link in _chain(exc) for n in getattr(link, "__notes__", []))
        print(f"moodleops: internal error: {type(exc).__name__}: {oneline(exc)[:300]}{notes}{hint}",
              file=sys.stderr)
        return int(ExitStatus.BUG)
    print(f"moodleops: error: {err.line()}", file=sys.stderr)
    return int(err.status)

