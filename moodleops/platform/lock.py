"""The platform-wide lock: one writer to Moodle at a time, whatever the host.

A PostgreSQL advisory lock on Moodle's database server, keyed by Moodle's
database name, so every web node and every operator's machine that reaches
the database sees the same lock (a file lock would only cover one host).
PostgreSQL drops it when the holding connection ends, so a killed holder never
leaves a stale lock behind. The holding connection goes to the server's
`postgres` database, not to Moodle's: a restore must be able to drop and
recreate Moodle's database while it holds the lock.

How to take it (incident runbooks, upgrades, restores, `maintenance off`)::

    from moodleops.platform.lock import PlatformLockBusy, platform_lock

    with platform_lock(site, "upgrade 4.1.10 -> 4.1.11"):
        ...                      # nobody else writes to Moodle meanwhile

It never waits: when busy it raises `PlatformLockBusy` whose message says who
holds it, since when and doing what (`.holder` has the same as fields), e.g.::

    the platform lock is held by "root pid 4242 on web1: incident
    INC-20261124-143012-ab12" (connection from 10.0.0.11, backend pid 311,
    since 2026-11-24 14:30:12 UTC); wait for it to finish, nothing was changed

`PlatformLockError` means the database could not be reached to take it.
Operations that must also refuse while an incident runbook holds the platform
in maintenance (upgrade, restore, `maintenance off`) use
`moodleops.platform.guard.platform_operation(site, env, what)`, which takes
this lock and then checks the incident journal.

Two keys. The *platform* key is held by the orchestrating process (Python)
for the whole plan-apply-journal sequence. The *writer* key is taken by each
PHP helper that changes Moodle for as long as it applies (see
moodleops/php/incident.php `moodleops_take_writer_lock`), on its own
connection to Moodle's database: if the Python side is killed, PHP still holds
the writer key until it has finished, and a new `platform_lock` refuses until
then (it checks the writer key after taking the platform key). Both use the
two-int form of the advisory lock (classid, objid), a key space Moodle's own
lock factory (bigint keys) never uses.
"""

from __future__ import annotations

import getpass
import os
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from moodleops.site import Site, SiteError

LOCK_CLASS = 0x6D6F6F64          # "mood": namespace of moodleops' advisory locks
LOCK_DATABASE = "postgres"       # where the platform key lives (survives Moodle's database being replaced)
APP_PREFIX = "moodleops "        # application_name of the holder's connection: "moodleops <who>: <what>"
_APP_NAME_MAX = 63               # PostgreSQL truncates application_name to NAMEDATALEN - 1


class PlatformLockBusy(RuntimeError):
    """Someone else holds the platform lock (or a PHP writer still applies)."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


class PlatformLockError(RuntimeError):
    """The lock could not be taken or checked: the database is unreachable."""


@dataclass(frozen=True)
class Holder:
    what: str            # the holder's application_name, without the prefix
    pid: int             # PostgreSQL backend pid
    since: datetime | None   # when the holding connection started (None: not visible to our role)
    client: str              # client address ("local" for a Unix socket)

    def describe(self) -> str:
        since = f"{self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else "a time this role may not see"
        return f'"{self.what}" (connection from {self.client}, backend pid {self.pid}, since {since})'


def key(site: Site, role: str) -> int:
    """The advisory objid of `role` (platform | writer) for this site's database."""
    return zlib.crc32(f"{site.db_name}/{role}".encode()) & 0x7FFFFFFF


def _app_name(what: str) -> str:
    who = f"{getpass.getuser()} pid {os.getpid()} on {socket.gethostname().split('.')[0]}"
    return (f"{APP_PREFIX}{who}: {what}")[:_APP_NAME_MAX]


def connect(site: Site, what: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the database server (its `postgres` database)
    as Moodle's read-only role, named after `what` (that name is what a refused
    caller is shown)."""
    try:
        password = site.secret("db_ro_password")
    except SiteError as exc:
        raise PlatformLockError(f"platform lock: {exc}") from None
    try:
        return psycopg.connect(host=site.db_host, port=site.db_port, dbname=LOCK_DATABASE, user=site.db_ro_user,
                               password=password, connect_timeout=10, autocommit=True,
                               application_name=_app_name(what))
    except psycopg.Error as exc:
        raise PlatformLockError(f"platform lock: cannot connect to {site.db_ro_user}@{site.db_host}:{site.db_port}/"
                                f"{LOCK_DATABASE}: "
                                f"{' '.join(str(exc).split())}; check that PostgreSQL is up") from None


def holder_of(conn: psycopg.Connection[Any], objid: int, database: str) -> Holder | None:
    """Who holds advisory key (LOCK_CLASS, objid) in `database`, if anyone."""
    row = conn.execute(
        "SELECT a.pid, coalesce(a.application_name, ''), a.backend_start, coalesce(host(a.client_addr), 'local')"
        "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = %s)",
        (LOCK_CLASS, objid, database)).fetchone()
    if row is None:
        return None
    name = str(row[1])
    return Holder(what=name[len(APP_PREFIX):] if name.startswith(APP_PREFIX) else (name or "unnamed connection"),
                  pid=int(row[0]), since=row[2], client=str(row[3]))


def _busy(conn: psycopg.Connection[Any], objid: int, database: str, role: str) -> PlatformLockBusy:
    holder = holder_of(conn, objid, database)
    who = holder.describe() if holder else "a connection that just let go (try again)"
    return PlatformLockBusy(f"the platform lock is held by {who}{role}; wait for it to finish, "
                            "nothing was changed", holder)


@contextmanager
def platform_lock(site: Site, what: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold the platform lock for the body of the `with`; `what` says what the
    holder does (shown to anyone refused). Never waits: raises PlatformLockBusy
    naming the holder, or PlatformLockError when the database is unreachable.
    Yields the holding connection (read-only role): keep it open, do not share it."""
    conn = connect(site, what)
    try:
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, key(site, "platform"))).fetchone()
            if not got or not got[0]:
                raise _busy(conn, key(site, "platform"), LOCK_DATABASE, "")
            # A PHP writer left by a killed holder may still be applying: it owns the platform until done.
            if holder_of(conn, key(site, "writer"), site.db_name) is not None:
                raise _busy(conn, key(site, "writer"), site.db_name,
                            " (a Moodle writer whose caller has gone, still applying)")
        except psycopg.Error as exc:
            raise PlatformLockError(f"platform lock: database error: {' '.join(str(exc).split())}") from None
        yield conn
    finally:
        conn.close()   # ends the session: PostgreSQL releases the lock


def writer_lock_spec(site: Site, conn: psycopg.Connection[Any], what: str) -> dict[str, Any]:
    """What a PHP helper needs (in its JSON request) to take the writer key and to
    check that the platform key is still held by `conn`, the connection that
    `platform_lock` yielded to its caller."""
    return {"class": LOCK_CLASS, "writer": key(site, "writer"), "platform": key(site, "platform"),
            "platform_db": LOCK_DATABASE, "holder_backend": conn.info.backend_pid, "what": what}
