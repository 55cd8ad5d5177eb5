"""Read-only measurements from Moodle's database, as the moodleops_ro role.

Only SELECTs: everything Moodle-side that changes goes through Moodle. Table
names carry the site's prefix (site.db_prefix)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from moodleops.capacity.errors import CapacityError
from psycopg import sql
from psycopg.rows import dict_row

from moodleops.site import Site, SiteError

_PREFIX = re.compile(r"^[a-z0-9_]*$")


@contextmanager
def connect(site: Site) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A read-only connection (the session refuses writes even if the role could)."""
    try:
        password = site.secret("db_ro_password")
    except SiteError as exc:
        raise CapacityError(str(exc)) from None
    try:
        conn = psycopg.connect(host=site.db_host, port=site.db_port, dbname=site.db_name,
                               user=site.db_ro_user, password=password, connect_timeout=10,
                               row_factory=dict_row,
                               options="-c default_transaction_read_only=on -c statement_timeout=120000")
    except psycopg.OperationalError as exc:
        raise CapacityError(f"database {site.db_name} on {site.db_host}:{site.db_port} as {site.db_ro_user} "
                            f"cannot be reached ({' '.join(str(exc).split())})") from None
    try:
        # One snapshot for the whole report: figures that add up, taken at one instant.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield conn
    finally:
        conn.close()


def q(site: Site, text: str) -> sql.Composed:
    """SQL with {name} table placeholders replaced by the prefixed identifiers."""
    if not _PREFIX.match(site.db_prefix):
        raise CapacityError(f"database prefix {site.db_prefix!r} is not valid ([a-z0-9_]*)")
    names = set(re.findall(r"\{([a-z_]+)\}", text))
    return sql.SQL(text).format(**{n: sql.Identifier(site.db_prefix + n) for n in names})


def rows(conn: psycopg.Connection[dict[str, Any]], site: Site, text: str,
         params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return list(conn.execute(q(site, text), params or {}).fetchall())
