"""PostgreSQL dump and restore of Moodle's database. pg_dump takes one
snapshot (a consistent dump while Moodle keeps running); the custom format
(-Fc) is compressed (zlib) and what pg_restore reads.

On a local database (unix socket) the tools run as the postgres superuser via
runuser; on a remote one they connect as the database owner with
site.secret('db_password')."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from moodleops.backup.s3 import BackupError
from moodleops.errors import OpsError
from moodleops.faults import database_error, filesystem_error
from moodleops.inventory import Inventory
from moodleops.site import Site

_LOCAL = {"127.0.0.1", "localhost", "::1", ""}


def _is_local(site: Site) -> bool:
    return site.db_host in _LOCAL


def _pg(site: Site, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if _is_local(site):
        return ["runuser", "-u", "postgres", "--", *argv], env
    env["PGPASSWORD"] = site.secret("db_password")
    return argv, env


def db_owner(inv: Inventory) -> str:
    return inv.settings.db_user


def _conn_args(site: Site, inv: Inventory) -> list[str]:
    if _is_local(site):
        return []
    return ["-h", site.db_host, "-p", str(site.db_port), "-U", db_owner(inv)]


def dump(site: Site, inv: Inventory, out: Path) -> int:
    """Consistent compressed dump of the site's database into `out`; returns its size."""
    argv, env = _pg(site, ["pg_dump", "-Fc", "-Z", "6", *_conn_args(site, inv), "-d", site.db_name])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, env=env, check=False)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise dump_error(site, out, proc.stderr.decode(errors="replace"))
    return out.stat().st_size


def dump_error(site: Site, out: Path, stderr: str) -> OpsError:
    """pg_dump failed: the disk it writes to, or the database it reads."""
    for text, code in (("No space left", errno.ENOSPC), ("Read-only file system", errno.EROFS)):
        fs = filesystem_error(OSError(code, text, str(out.parent))) if text in stderr else None
        if fs is not None:
            return fs
    return database_error(RuntimeError(f"pg_dump of {site.db_name}: {stderr.strip()[-400:]}"),
                          f"{site.db_host or 'local socket'}:{site.db_port}/{site.db_name}")


def _psql(site: Site, sql: str) -> None:
    argv, env = _pg(site, ["psql", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-Atc", sql])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BackupError(f"psql failed: {sql[:80]}: {proc.stderr.strip()[-500:]}")


def restore(site: Site, inv: Inventory, dump_file: Path) -> None:
    """Replace the site's database by the dump. Local: drop and recreate it
    (owner, UTF8, C.UTF-8 as the postgresql role creates it). Remote: the owner
    cannot create databases, so objects are dropped and recreated in place."""
    owner = db_owner(inv)
    name = site.db_name
    if _is_local(site):
        # Identifiers come from the inventory; quote them anyway.
        _psql(site, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _psql(site, f"CREATE DATABASE \"{name}\" OWNER \"{owner}\" ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
                    f"LC_CTYPE 'C.UTF-8' TEMPLATE template0")
        extra = ["--no-owner", f"--role={owner}"]
    else:
        extra = ["--clean", "--if-exists", "--no-owner"]
    # pg_restore runs as postgres and must read the dump: hand it over on stdin.
    argv, env = _pg(site, ["pg_restore", "--exit-on-error", *extra, *_conn_args(site, inv), "-d", name])
    with open(dump_file, "rb") as fh:
        proc = subprocess.run(argv, stdin=fh, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise BackupError(f"pg_restore into {name} failed (exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()[-800:]}")


def referenced_contenthashes(dump_file: Path, db_prefix: str) -> Iterator[str]:
    """Every contenthash the dump's files table names (once per row), read from
    the dump itself: what a restore of this dump will ask filedir for. Streams:
    pg_restore writes the table's COPY data, read line by line."""
    table = f"{db_prefix}files"
    proc = subprocess.Popen(["pg_restore", "--data-only", f"--table={table}", "-f", "-", str(dump_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    column = -1
    seen_table = False
    for line in proc.stdout:
        if column < 0:
            if line.startswith("COPY ") and f".{table} (" in line:
                cols = [c.strip().strip('"') for c in line[line.index("(") + 1:line.index(")")].split(",")]
                column = cols.index("contenthash")
                seen_table = True
            continue
        if line.startswith("\\."):
            column = -1
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) > column:
            yield fields[column]
    err = proc.stderr.read()
    if proc.wait() != 0 or not seen_table:
        raise BackupError(f"cannot read table {table} from the dump {dump_file} (pg_restore exit "
                          f"{proc.returncode}): {err.strip()[-300:] or 'no such table in the dump'}")
