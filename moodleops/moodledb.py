"""The one way Python reads Moodle's database: read-only, one snapshot per connection.

Only SELECTs (and COPY out): everything Moodle-side that changes goes through
Moodle. Table names are written {name} and get the site's prefix (q()).
Used by the storage exporter, billing, capacity reviews, incidents (school
membership) and the load tests' checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from moodleops.faults import database_error
from moodleops.site import Site

_PREFIX = re.compile(r"^[a-z0-9_]*$")


class MoodleDBError(RuntimeError):
    """Moodle's database cannot be read (unreachable, refused, bad prefix)."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    prefix: str

    def describe(self) -> str:
        return f"database {self.dbname} on {self.host}:{self.port} as {self.user}"

    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def target_of(site: Site, *, primary: bool = False) -> Target:
    """The read-only role of a moodleops.site.Site (its password from site.secret),
    on its read host (the replica, when there is one). `primary`: a read that must
    see the last write (an incident's plan), which a replica may not have replayed yet."""
    return Target(host=site.db_host if primary else site.db_read_host, port=site.db_port, dbname=site.db_name,
                  user=site.db_ro_user, password=site.secret("db_ro_password"), prefix=site.db_prefix)


@contextmanager
def connect(target: Target, *, application: str = "moodleops", dict_rows: bool = True,
            connect_timeout_s: float = 10, statement_timeout_s: float | None = 120
            ) -> Iterator[psycopg.Connection[Any]]:
    """open_readonly() as a context: closed on the way out."""
    conn = open_readonly(target, application=application, dict_rows=dict_rows,
                         connect_timeout_s=connect_timeout_s, statement_timeout_s=statement_timeout_s)
    try:
        yield conn
    except psycopg.Error as exc:
        # A missing grant or a statement timeout: one line naming the database (moodleops.faults).
        raise database_error(exc, target.address()) from exc
    finally:
        conn.close()


def open_readonly(target: Target, *, application: str = "moodleops", dict_rows: bool = True,
                  connect_timeout_s: float = 10, statement_timeout_s: float | None = 120
                  ) -> psycopg.Connection[Any]:
    """A read-only connection whose every query sees one snapshot until commit
    (figures that add up, taken at one instant); the session refuses writes
    even if the role could."""
    if not _PREFIX.match(target.prefix):
        raise MoodleDBError(f"database prefix {target.prefix!r} is not valid ([a-z0-9_]*)")
    options = "-c default_transaction_read_only=on"
    if statement_timeout_s:
        options += f" -c statement_timeout={int(statement_timeout_s * 1000)}"
    try:
        conn = psycopg.connect(host=target.host, port=target.port, dbname=target.dbname, user=target.user,
                               password=target.password, connect_timeout=max(1, int(connect_timeout_s)),
                               application_name=application, options=options,
                               row_factory=dict_row if dict_rows else psycopg.rows.tuple_row)
    except psycopg.Error as exc:
        raise MoodleDBError(f"{target.describe()} cannot be reached ({' '.join(str(exc).split())})") from None
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def q(prefix: str, text: str) -> sql.Composed:
    """SQL with {name} table placeholders replaced by the prefixed identifiers."""
    if not _PREFIX.match(prefix):
        raise MoodleDBError(f"database prefix {prefix!r} is not valid ([a-z0-9_]*)")
    names = set(re.findall(r"\{([a-z_]+)\}", text))
    return sql.SQL(text).format(**{n: sql.Identifier(prefix + n) for n in names})


def rows(conn: psycopg.Connection[Any], prefix: str, text: str,
         params: dict[str, Any] | None = None) -> list[Any]:
    return list(conn.execute(q(prefix, text), params or {}).fetchall())
