"""The scanner against the real local Moodle: the numbers of the test's own
schools must equal what the test computes from what it uploaded."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from moodleops.exporters.storage_drilldown import drilldown
from moodleops.exporters.storage_model import DRAFT, UNMAPPED, USERS, ScanConfig, ScanResult, SchoolSpec
from moodleops.exporters.storage_scan import ScanError, connect, scan
from storage_world import World

pytestmark = pytest.mark.stack


def expected(world: World, school: int) -> dict[str, int]:
    """Independent figures for one test school, from the uploads themselves and
    the recycle-bin backup Moodle reported storing."""
    rows = [(u.sha1, u.size) for u in world.uploads if u.school == school]
    if school == 0:
        rows += [(f["contenthash"], f["filesize"]) for f in world.recycle_files]
    other = {u.sha1 for u in world.uploads if u.school != school}
    distinct = dict(rows)
    exclusive = sum(sz for h, sz in distinct.items() if h not in other)
    shared = sum(sz for h, sz in distinct.items() if h in other)
    return {"files": len(rows), "logical_bytes": sum(sz for _, sz in rows),
            "unique_bytes": sum(distinct.values()), "exclusive_bytes": exclusive,
            # the content shared by the two schools counts half to each (its size is even)
            "apportioned_bytes": exclusive + shared // 2}


@pytest.fixture(scope="module")
def snapshot(scan_config: ScanConfig) -> tuple[ScanResult, dict[str, int]]:
    """One scan and independent aggregate queries in the same REPEATABLE READ
    snapshot: concurrent activity of other tests cannot make them disagree."""
    p = scan_config.db.prefix
    conn = connect(scan_config)
    try:
        with conn.transaction(), conn.cursor() as cur:
            result = scan(scan_config, conn)
            cur.execute(f"""SELECT
                  (SELECT COUNT(*) FROM {p}files WHERE filesize > 0),
                  (SELECT COALESCE(SUM(s), 0) FROM (SELECT MAX(filesize) s FROM {p}files
                                                     WHERE filesize > 0 GROUP BY contenthash) d),
                  (SELECT COALESCE(SUM(f.filesize), 0) FROM {p}files f JOIN {p}context c ON c.id = f.contextid
                    WHERE f.filesize > 0 AND c.contextlevel = 30
                      AND NOT (f.component = 'user' AND f.filearea = 'draft')),
                  (SELECT COALESCE(SUM(filesize), 0) FROM {p}files
                    WHERE filesize > 0 AND component = 'user' AND filearea = 'draft')""")
            row = cur.fetchone()
            assert row is not None
    finally:
        conn.close()
    return result, {"files": int(row[0]), "distinct": int(row[1]), "users_logical": int(row[2]),
                    "draft_logical": int(row[3])}


@pytest.mark.parametrize("school", [0, 1])
def test_school_buckets_equal_what_was_uploaded(world: World, snapshot: tuple[ScanResult, dict[str, int]],
                                                school: int) -> None:
    result, _ = snapshot
    assert world.built["recyclebin_enabled"], "the category recycle bin is off: the scenario needs it"
    assert world.recycle_files, "delete_course() left no backup in the category recycle bin"
    got = dataclasses.asdict(result.school(world.schools[school].code))
    assert got == expected(world, school)


def test_every_byte_is_attributed_once(snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    result, truth = snapshot
    assert sum(b.files for b in result.buckets.values()) == truth["files"]
    assert sum(b.apportioned_bytes for b in result.buckets.values()) == truth["distinct"]
    assert result.pool.distinct_bytes == truth["distinct"]
    assert result.bucket(USERS).logical_bytes == truth["users_logical"]
    assert result.bucket(DRAFT).logical_bytes == truth["draft_logical"]
    for b in result.buckets.values():
        assert b.exclusive_bytes <= b.apportioned_bytes <= b.unique_bytes <= b.logical_bytes


def test_user_files_and_drafts_are_counted_apart(world: World, scan_config: ScanConfig) -> None:
    """Private files land in `users`, the draft in `draft`, and neither in a school.
    Checked with a per-user-context restriction of the same snapshot."""
    mine = [f for u in world.built["users"] for f in u["files"]]
    assert {f["filearea"] for f in mine} == {"private", "draft"}
    p = scan_config.db.prefix
    conn = connect(scan_config)
    try:
        with conn.transaction(), conn.cursor() as cur:
            result = scan(scan_config, conn)
            cur.execute(f"""SELECT component, filearea, contenthash, filesize FROM {p}files
                             WHERE contextid = ANY(%s) AND filesize > 0""",
                        ([f["contextid"] for f in mine],))
            stored = {(r[1], r[2], int(r[3])) for r in cur.fetchall()}
    finally:
        conn.close()
    assert stored == {(f["filearea"], f["contenthash"], f["filesize"]) for f in mine}
    drafts = sum(f["filesize"] for f in mine if f["filearea"] == "draft")
    privates = sum(f["filesize"] for f in mine if f["filearea"] == "private")
    assert result.bucket(DRAFT).logical_bytes >= drafts
    assert result.bucket(USERS).logical_bytes >= privates
    for s in world.schools:   # the school numbers above already exclude them exactly
        assert result.school(s.code).files == expected(world, world.schools.index(s))["files"]


def test_accounts_per_school(world: World, snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    result, _ = snapshot
    a, b = (result.accounts[s.code] for s in world.schools)
    assert (a.active, a.suspended, a.hosted_expiring) == (1, 1, 1)     # u1 trainer, u2 suspended student
    assert (b.active, b.suspended, b.hosted_expiring) == (2, 0, 1)     # u3 student, u4 referent
    assert result.hosted_expiry.month == 8 and result.hosted_expiry.day == 31


def test_drilldown_by_year_and_course(world: World, scan_config: ScanConfig) -> None:
    spec = world.schools[0]
    root = drilldown(scan_config, spec)
    exp = expected(world, 0)
    assert (root.files, root.logical_bytes, root.unique_bytes) == (
        exp["files"], exp["logical_bytes"], exp["unique_bytes"])
    years = {n.name: n for n in root.children.values()}
    assert set(years) == {"Year 1", "Year 2", "(directly in the school category)"}
    y1 = {n.key.split(":")[0]: n for n in years["Year 1"].children.values()}
    # Year 1: one course (same-twice, module, shared) and the recycle-bin backup at category level.
    c1 = [u for u in world.uploads if u.school == 0 and u.year == 0 and u.where != "category"]
    assert y1["course"].logical_bytes == sum(u.size for u in c1)
    assert y1["category-files"].logical_bytes == sum(f["filesize"] for f in world.recycle_files)
    y2 = list(years["Year 2"].children.values())
    assert [n.logical_bytes for n in y2] == [sum(u.size for u in world.uploads if u.school == 0 and u.year == 1
                                                 and u.where != "category")]
    top = years["(directly in the school category)"]
    assert top.logical_bytes == sum(u.size for u in world.uploads if u.where == "category")


def test_unknown_and_missing_categories_are_reported(world: World, scan_config: ScanConfig) -> None:
    """School B left out of the mapping: its category is unmapped and named; a
    school whose category does not exist is reported, and nothing crashes."""
    ghost = SchoolSpec(code=f"t5{world.tag}_ghost", category_idnumber=f"T5-{world.tag}-NOPE",
                       cohort_idnumber=f"T5-{world.tag}-NOPE", alert_bytes=1)
    cfg = dataclasses.replace(scan_config, schools=(world.schools[0], ghost), walk_filedir=False)
    result = scan(cfg)
    b_cat = world.built["schools"][1]["category_id"]
    assert b_cat in {c.id for c in result.unmapped_categories}
    assert any(world.schools[1].category_idnumber in w for w in result.warnings)
    assert result.missing_schools == [ghost.code]
    assert any(ghost.category_idnumber in w and ghost.code in w for w in result.warnings)
    assert result.bucket(UNMAPPED).unique_bytes >= expected(world, 1)["unique_bytes"]
    assert result.school(ghost.code).files == 0
    assert dataclasses.asdict(result.school(world.schools[0].code)) == expected(world, 0)


def test_uploaded_contents_are_found_in_filedir(world: World, scan_config: ScanConfig) -> None:
    """With the walk on, the test's contents are neither missing nor orphans,
    and filedir is laid out where Moodle says it is."""
    result = scan(scan_config)
    f = result.pool.filedir
    assert f is not None and f.blobs > 0
    for u in world.uploads:
        h = u.sha1
        assert (scan_config.paths.filedir / h[:2] / h[2:4] / h).is_file()
    assert f.blobs >= result.pool.distinct_blobs - f.missing_blobs - f.missing_in_trash
    assert result.pool.fs_capacity_bytes and result.pool.fs_used_bytes


def test_database_down_is_a_clear_error(scan_config: ScanConfig, unused_port: int) -> None:
    cfg = dataclasses.replace(scan_config, db=dataclasses.replace(scan_config.db, port=unused_port))
    with pytest.raises(ScanError) as err:
        scan(cfg)
    msg = str(err.value)
    assert f"127.0.0.1:{unused_port}" in msg and "cannot connect" in msg
    assert "\n" not in msg


def test_read_only_role_cannot_write(scan_config: ScanConfig) -> None:
    conn = connect(scan_config)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), conn.transaction(), conn.cursor() as cur:
            cur.execute(f"UPDATE {scan_config.db.prefix}files SET filesize = filesize WHERE id = -1")
    finally:
        conn.close()
