"""External references (aliases to a repository that needs a network: Dropbox,
Google Drive...) cannot be made here, since nothing leaves the machine: their
rows are written into a SCRATCH database with Moodle's own DDL (never into
Moodle's), as Moodle writes them: the empty file's contenthash with the size the
repository reported. They are counted apart, never in the stored figures."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from moodleops.exporters.storage_config import config_from_inventory
from moodleops.exporters.storage_model import DRAFT, ScanConfig, SchoolSpec, StoragePaths
from moodleops.exporters.storage_scan import EMPTY_HASH, scan

from moodleops.inventory import Inventory
from moodleops.site import Site

pytestmark = pytest.mark.stack

TABLES = ("files", "context", "course_categories", "course", "config_plugins", "cohort", "cohort_members",
          "user", "user_info_field", "user_info_data")


def psql(db: str, sql: str) -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v",
                           "ON_ERROR_STOP=1", "-d", db], input=sql, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def base_config(local_inventory: Inventory, site: Site, tmp_path) -> ScanConfig:  # type: ignore[no-untyped-def]
    cfg, _ = config_from_inventory(local_inventory, site, paths=StoragePaths.defaults(tmp_path), walk_filedir=False)
    return cfg


@pytest.fixture
def scratch(base_config: ScanConfig) -> Iterator[str]:
    scan_config = base_config
    db = f"moodleops_t15_{uuid.uuid4().hex[:8]}"
    p = scan_config.db.prefix
    cmd = ["runuser", "-u", "postgres", "--", "pg_dump", "--schema-only", "--no-owner", "--no-privileges",
           "-d", scan_config.db.dbname]
    for t in TABLES:
        cmd += ["-t", f"public.{p}{t}"]
    ddl = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    psql("postgres", f"CREATE DATABASE {db}")
    try:
        psql(db, ddl)
        psql(db, f"GRANT CONNECT ON DATABASE {db} TO {scan_config.db.user}; "
                 f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {scan_config.db.user};")
        yield db
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_external_references_are_counted_apart(base_config: ScanConfig, scratch: str) -> None:
    scan_config = base_config
    p = scan_config.db.prefix
    stored = hashlib.sha1(b"a stored file").hexdigest()
    rows = [  # contextid, component, filearea, contenthash, filesize
        (3, "course", "overviewfiles", stored, 1000),            # stored content
        (3, "course", "overviewfiles", EMPTY_HASH, 0),           # its directory row
        (3, "mod_resource", "content", EMPTY_HASH, 5_000_000),   # alias to a Dropbox file
        (3, "mod_folder", "content", EMPTY_HASH, 7),             # another
        (4, "user", "draft", EMPTY_HASH, 300),                   # picked into a draft, not saved yet
        (4, "user", "draft", stored, 1000),                      # a draft copy of the stored file
        (4, "user", "backup", hashlib.sha1(b"mbz").hexdigest(), 50),   # a backup of course 5, see its name
    ]
    names = {6: "backup-moodle2-course-5-x1-20261201-1200-nu.mbz"}
    values = ",\n".join(
        f"({i + 1}, '{h}', '{hashlib.sha1(str(i).encode()).hexdigest()}', {ctx}, '{comp}', '{area}', 0, '/', "
        f"'{names.get(i, f'f{i}')}', {size}, 0, 0)" for i, (ctx, comp, area, h, size) in enumerate(rows))
    psql(scratch, f"""
        INSERT INTO {p}course_categories (id, name, idnumber, parent, path, depth)
             VALUES (1, 'School X', 'X-CAT', 0, '/1', 1);
        INSERT INTO {p}context (id, contextlevel, instanceid, path, depth)
             VALUES (1, 10, 0, '/1', 1), (2, 40, 1, '/1/2', 2), (3, 50, 5, '/1/2/3', 3), (4, 30, 9, '/1/4', 2);
        INSERT INTO {p}files (id, contenthash, pathnamehash, contextid, component, filearea, itemid, filepath,
                              filename, filesize, timecreated, timemodified)
             VALUES {values};""")
    school = SchoolSpec(code="x", category_idnumber="X-CAT", cohort_idnumber="X-COH", alert_bytes=10**9)
    cfg = dataclasses.replace(scan_config, db=dataclasses.replace(scan_config.db, dbname=scratch),
                              schools=(school,), walk_filedir=False)
    r = scan(cfg)
    x = dataclasses.asdict(r.school("x"))
    assert x == {"files": 2, "logical_bytes": 1050, "unique_bytes": 1050, "exclusive_bytes": 1050,
                 "apportioned_bytes": 1050, "external_refs": 2, "external_claimed_bytes": 5_000_007}
    assert [(b.school, b.course_id, b.where) for b in r.backups] == [("x", 5, "user_backup_area")]
    d = r.bucket(DRAFT)
    assert (d.files, d.unique_bytes, d.exclusive_bytes, d.apportioned_bytes) == (1, 1000, 0, 0)
    assert (d.external_refs, d.external_claimed_bytes) == (1, 300)
    assert (r.pool.distinct_blobs, r.pool.distinct_bytes) == (2, 1050)
    assert sum(b.apportioned_bytes for b in r.buckets.values()) == 1050
    assert r.accounts["x"].hosted_expiring in (0, None)


def _school_world(p: str) -> str:
    """A school category with one course, in the scratch database."""
    return f"""
        INSERT INTO {p}course_categories (id, name, idnumber, parent, path, depth)
             VALUES (1, 'School X', 'X-CAT', 0, '/1', 1);
        INSERT INTO {p}course (id, category, shortname, fullname) VALUES (5, 1, 'x1', 'X one');
        INSERT INTO {p}context (id, contextlevel, instanceid, path, depth)
             VALUES (1, 10, 0, '/1', 1), (2, 40, 1, '/1/2', 2), (3, 50, 5, '/1/2/3', 3);"""


def test_automated_backups_outside_moodledata_go_to_the_course_school(base_config: ScanConfig, scratch: str,
                                                                      tmp_path) -> None:  # type: ignore[no-untyped-def]
    """backup_auto_storage 1 (a directory): each .mbz named after its course is listed
    with that course's school; other files and gone courses are not a school's."""
    p = base_config.db.prefix
    auto = tmp_path / "autobackups"
    auto.mkdir()
    (auto / "backup-moodle2-course-5-x1-20261201-0300.mbz").write_bytes(b"z" * 1234)
    (auto / "backup-moodle2-course-77-gone-20261201-0300.mbz").write_bytes(b"z" * 10)
    (auto / "notes.txt").write_text("not a backup")
    psql(scratch, _school_world(p) + f"""
        INSERT INTO {p}config_plugins (plugin, name, value)
             VALUES ('backup', 'backup_auto_storage', '1'), ('backup', 'backup_auto_destination', '{auto}');""")
    school = SchoolSpec(code="x", category_idnumber="X-CAT", cohort_idnumber="X-COH", alert_bytes=10**9)
    cfg = dataclasses.replace(base_config, db=dataclasses.replace(base_config.db, dbname=scratch), schools=(school,))
    r = scan(cfg)
    got = sorted((b.school, b.course_id, b.where, b.size) for b in r.backups)
    assert got == [("", 77, "automated_dir", 10), ("x", 5, "automated_dir", 1234)]
    assert r.school("x").files == 0     # outside the pool: listed, not in the figures


@pytest.mark.parametrize(("source", "pattern", "hosted"), [
    ("department", "", 2),       # department in hosted_types (trainer, referent)
    ("institution", "", 1),
    ("auth", "", 1),
    ("idnumber", "^EXT-", 2),
])
def test_account_type_from_a_standard_user_field(base_config: ScanConfig, scratch: str, source: str,
                                                 pattern: str, hosted: int) -> None:
    p = base_config.db.prefix
    users = [  # id, department, institution, auth, idnumber, suspended
        (11, "trainer", "referent", "cas", "EXT-1", 0),
        (12, "referent", "UT", "manual", "EXT-2", 0),
        (13, "student", "UT", "cas", "S-3", 0),
        (14, "trainer", "trainer", "manual", "EXT-4", 1),     # suspended: never counted as hosted
    ]
    vals = ", ".join(f"({i}, 'u{i}', '{d}', '{inst}', '{a}', '{idn}', {s}, 0, 1)" for i, d, inst, a, idn, s in users)
    psql(scratch, _school_world(p) + f"""
        INSERT INTO {p}user (id, username, department, institution, auth, idnumber, suspended, deleted, mnethostid)
             VALUES {vals};
        INSERT INTO {p}cohort (id, contextid, name, idnumber, descriptionformat, timecreated, timemodified)
             VALUES (1, 2, 'X', 'X-COH', 1, 0, 0);
        INSERT INTO {p}cohort_members (id, cohortid, userid, timeadded)
             VALUES (1, 1, 11, 0), (2, 1, 12, 0), (3, 1, 13, 0), (4, 1, 14, 0);""")
    hosted_types = ("trainer", "referent") if source != "auth" else ("manual",)
    policy = dataclasses.replace(base_config.accounts, method="cohort", type_source=source, hosted_pattern=pattern,
                                 hosted_types=hosted_types)
    school = SchoolSpec(code="x", category_idnumber="X-CAT", cohort_idnumber="X-COH", alert_bytes=10**9)
    empty = SchoolSpec(code="y", category_idnumber="Y-CAT", cohort_idnumber="Y-COH", alert_bytes=10**9)
    cfg = dataclasses.replace(base_config, db=dataclasses.replace(base_config.db, dbname=scratch),
                              schools=(school, empty), accounts=policy)
    r = scan(cfg)
    a = r.accounts["x"]
    assert (a.active, a.suspended, a.hosted_expiring) == (3, 1, hosted)
    assert r.accounts["y"].hosted_expiring == 0      # a school with none: 0, not absent
