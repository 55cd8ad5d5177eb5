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


def measures(world: World) -> dict[str, dict[str, int]]:
    """The four measures of docs/storage.md for each owner ("school:<i>", "draft",
    "users"), computed the plain way from who owns which row (World.owned_rows, from
    what Moodle reported storing): drafts are never an owner of a content another
    owner has; a shared content is split evenly, the remainder bytes one each to the
    owners in bucket order (school code order here)."""
    rows = world.owned_rows()
    size = {h: sz for _, h, sz in rows}
    owners: dict[str, set[str]] = {}
    for who, h, _ in rows:
        owners.setdefault(h, set()).add(who)
    order = {f"school:{i}": ("school", s.code) for i, s in enumerate(world.schools)}
    order.update(draft=("draft", ""), users=("users", ""))
    out: dict[str, dict[str, int]] = {}
    for who in sorted({r[0] for r in rows} | set(order)):
        mine = [(h, sz) for w, h, sz in rows if w == who]
        distinct = {h for h, _ in mine}
        exclusive = apportioned = 0
        for h in distinct:
            real = sorted((o for o in owners[h] if o != "draft"), key=order.__getitem__) or ["draft"]
            if who not in real:
                continue
            if real == [who]:
                exclusive += size[h]
            share, extra = divmod(size[h], len(real))
            apportioned += share + (1 if real.index(who) < extra else 0)
        out[who] = {"files": len(mine), "logical_bytes": sum(sz for _, sz in mine),
                    "unique_bytes": sum(size[h] for h in distinct), "exclusive_bytes": exclusive,
                    "apportioned_bytes": apportioned, "external_refs": 0, "external_claimed_bytes": 0}
    return out


def expected(world: World, school: int) -> dict[str, int]:
    return measures(world)[f"school:{school}"]


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
                      AND NOT (f.component = 'user' AND f.filearea = 'draft')
                      -- a course backup goes to its course's school, when the course exists
                      AND NOT (f.component = 'user' AND f.filearea = 'backup' AND EXISTS (
                          SELECT 1 FROM {p}course co
                           WHERE f.filename LIKE '%%-moodle2-course-' || co.id || '-%%'
                             AND split_part(f.filename, '-', 4) = co.id::text))),
                  (SELECT COALESCE(SUM(filesize), 0) FROM {p}files
                    WHERE filesize > 0 AND component = 'user' AND filearea = 'draft')""")
            row = cur.fetchone()
            assert row is not None
    finally:
        conn.close()
    return result, {"files": int(row[0]), "distinct": int(row[1]), "users_logical": int(row[2]),
                    "draft_logical": int(row[3])}


@pytest.mark.parametrize("school", [0, 1, 2])
def test_school_buckets_equal_what_was_uploaded(world: World, snapshot: tuple[ScanResult, dict[str, int]],
                                                school: int) -> None:
    result, _ = snapshot
    assert world.built["recyclebin_enabled"], "the category recycle bin is off: the scenario needs it"
    assert world.recycle_files, "delete_course() left no backup in the category recycle bin"
    got = dataclasses.asdict(result.school(world.schools[school].code))
    assert got == expected(world, school)


def test_the_cases_happened_as_moodle_does_them(world: World) -> None:
    """The scenario itself: drafts hold copies of school files, the alias carries the
    content of the file it points to, the backup is named after its course."""
    c = world.built["cases"]
    saved, draft = c["upload"]["saved"], c["upload"]["draft"]
    assert [f["contenthash"] for f in saved] == [f["contenthash"] for f in draft] == [world.cases_hash("upload")]
    prepared = {p["upload"]: {f["contenthash"] for f in p["draft"]} for p in c["prepared"]}
    assert prepared[6] == {world.uploads[6].sha1}
    assert prepared[2] == {world.uploads[0].sha1, world.uploads[2].sha1}    # same-twice and shared-ab
    assert [f["contenthash"] for f in c["alias"]] == [world.uploads[1].sha1]
    [bk] = c["backup"]["files"]
    assert bk["filename"].startswith("backup-moodle2-course-") and bk["filename"].endswith(".mbz")
    assert bk["filename"].split("-")[3] == str(c["backup"]["course_id"])


def test_drafts_never_lower_a_school(world: World, snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    """Each school file also in a draft stays exclusive to its school, and whole in its
    share; the drafts' own figure holds only content reachable through drafts alone."""
    result, _ = snapshot
    a = result.school(world.schools[0].code)
    up = world.cases["upload"]["content"]
    assert a.exclusive_bytes >= len(up.encode())
    b = result.school(world.schools[1].code)
    assert b.exclusive_bytes >= world.uploads[6].size     # module-b, opened in an edit form
    m = measures(world)
    assert m["draft"]["exclusive_bytes"] == m["draft"]["apportioned_bytes"] == world.users_draft_size()
    assert result.bucket(DRAFT).unique_bytes >= m["draft"]["unique_bytes"]


def test_course_backup_in_a_teacher_area_is_the_course_school(world: World,
                                                              snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    result, _ = snapshot
    [bk] = world.built["cases"]["backup"]["files"]
    mine = [b for b in result.backups if b.name == bk["filename"]]
    assert [(b.school, b.where, b.size, b.course_id) for b in mine] == [
        (world.schools[0].code, "user_backup_area", bk["filesize"], world.built["cases"]["backup"]["course_id"])]


def test_moved_school_category_is_named_and_keeps_its_files(world: World,
                                                             snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    result, _ = snapshot
    c, b = world.schools[2], world.schools[1]
    probs = [p for p in result.category_problems if p.school == c.code]
    assert [p.problem for p in probs] == ["moved"]
    assert f"Storage test {b.code}" in probs[0].detail and c.code in probs[0].detail
    assert any(probs[0].detail == w for w in result.warnings)
    assert not [p for p in result.category_problems if p.school in (world.schools[0].code, b.code)]


def test_renamed_school_category_is_named(world: World, scan_config: ScanConfig) -> None:
    a = world.schools[0]
    cfg = dataclasses.replace(scan_config, schools=(dataclasses.replace(a, name="Not what Moodle has"),),
                              walk_filedir=False)
    result = scan(cfg)
    [p] = result.category_problems
    assert (p.school, p.problem) == (a.code, "renamed")
    assert f"Storage test {a.code}" in p.detail and "Not what Moodle has" in p.detail


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
    c = world.built["cases"]
    mine = [f for u in world.built["users"] for f in u["files"]]
    assert {f["filearea"] for f in mine} == {"private", "draft"}
    # The teacher's drafts (upload, edit forms) and course backup are in a user context too.
    mine += c["upload"]["draft"] + [f for p in c["prepared"] for f in p["draft"]] + c["backup"]["files"]
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
    drafts = len([f for f in mine if f["filearea"] == "draft"])
    privates = sum(f["filesize"] for f in mine if f["filearea"] == "private")
    assert result.bucket(DRAFT).files >= drafts
    assert result.bucket(USERS).logical_bytes >= privates
    for s in world.schools:   # the school numbers above already exclude them exactly
        assert result.school(s.code).files == expected(world, world.schools.index(s))["files"]


def test_accounts_per_school(world: World, snapshot: tuple[ScanResult, dict[str, int]]) -> None:
    result, _ = snapshot
    a, b, c = (result.accounts[s.code] for s in world.schools)
    assert (a.active, a.suspended, a.hosted_expiring) == (1, 1, 1)     # u1 trainer, u2 suspended student
    assert (b.active, b.suspended, b.hosted_expiring) == (2, 0, 1)     # u3 student, u4 referent
    assert (c.active, c.suspended, c.hosted_expiring) == (0, 0, 0)     # no account: 0, not absent
    assert result.hosted_expiry.month == 8 and result.hosted_expiry.day == 31


def test_drilldown_by_year_and_course(world: World, scan_config: ScanConfig) -> None:
    spec = world.schools[0]
    root = drilldown(scan_config, spec)
    # The drill-down shows the school's category tree: the teacher's backup (a user
    # context, counted in the school's figures) is not in it.
    backup = {f["contenthash"]: f["filesize"] for f in world.built["cases"]["backup"]["files"]}
    mine = [(h, sz) for who, h, sz in world.owned_rows() if who == "school:0" and h not in backup]
    assert (root.files, root.logical_bytes, root.unique_bytes) == (
        len(mine), sum(sz for _, sz in mine), sum(dict(mine).values()))
    years = {n.name: n for n in root.children.values()}
    assert set(years) == {"Year 1", "Year 2", "(directly in the school category)"}
    y1 = {n.key.split(":")[0]: n for n in years["Year 1"].children.values()}
    # Year 1: one course (same-twice, module, shared) and the recycle-bin backup at category level.
    c1 = [u for u in world.uploads if u.school == 0 and u.year == 0 and u.where != "category"]
    uploaded = sum(f["filesize"] for f in world.built["cases"]["upload"]["saved"])
    assert y1["course"].logical_bytes == sum(u.size for u in c1) + uploaded
    assert y1["category-files"].logical_bytes == sum(f["filesize"] for f in world.recycle_files)
    y2 = list(years["Year 2"].children.values())
    assert [n.logical_bytes for n in y2] == [sum(u.size for u in world.uploads if u.school == 0 and u.year == 1
                                                 and u.where != "category")]
    top = years["(directly in the school category)"]
    assert top.logical_bytes == sum(u.size for u in world.uploads if u.where == "category" and u.school == 0)


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
