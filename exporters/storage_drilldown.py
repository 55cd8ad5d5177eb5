"""Drill-down of one school: year (depth-3 subcategory) -> course.

A school's category tree is small (thousands of contexts, ~100k rows at
production scale), so its rows are read once and grouped in Python, where
"unique" (distinct contents per group) is a set per group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from moodleops.exporters.storage_model import ScanConfig, SchoolSpec
from moodleops.exporters.storage_scan import EMPTY_HASH, ScanError, _oneline, connect

CONTEXT_COURSECAT, CONTEXT_COURSE = 40, 50


@dataclass
class Node:
    key: str                 # "year:<id>" / "course:<id>" / "category-files"
    name: str
    files: int = 0
    logical_bytes: int = 0
    unique_bytes: int = 0
    hashes: set[str] = field(default_factory=set, repr=False)
    children: dict[str, Node] = field(default_factory=dict)

    def add(self, h: str, size: int) -> None:
        self.files += 1
        self.logical_bytes += size
        if h not in self.hashes:
            self.hashes.add(h)
            self.unique_bytes += size

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "name": self.name, "files": self.files,
                               "logical_bytes": self.logical_bytes, "unique_bytes": self.unique_bytes}
        if self.children:
            out["children"] = [c.as_dict() for c in sorted(self.children.values(),
                                                            key=lambda n: -n.unique_bytes)]
        return out


def drilldown(cfg: ScanConfig, school: SchoolSpec) -> Node:
    """The school's tree: root -> years -> courses (plus category-level files)."""
    conn = connect(cfg)
    p = cfg.db.prefix
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, true)",
                        (f"{int(cfg.statement_timeout_s * 1000)}",))
            cur.execute(f"""SELECT cc.id, cc.name, ctx.path FROM {p}course_categories cc
                              JOIN {p}context ctx ON ctx.contextlevel = {CONTEXT_COURSECAT}
                                              AND ctx.instanceid = cc.id
                             WHERE cc.idnumber = %s""", (school.category_idnumber,))
            row = cur.fetchone()
            if row is None:
                raise ScanError(f"school {school.code}: no category with idnumber "
                                f"{school.category_idnumber!r} in Moodle")
            root = Node(key=f"school:{school.code}", name=str(row[1]))
            top_path = str(row[2])
            like = top_path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
            cur.execute(f"""SELECT ctx.id, ctx.path, ctx.contextlevel, ctx.instanceid,
                                   COALESCE(cc.name, c.shortname)
                              FROM {p}context ctx
                              LEFT JOIN {p}course_categories cc ON ctx.contextlevel = {CONTEXT_COURSECAT}
                                                               AND cc.id = ctx.instanceid
                              LEFT JOIN {p}course c ON ctx.contextlevel = {CONTEXT_COURSE}
                                                   AND c.id = ctx.instanceid
                             WHERE ctx.path = %s OR ctx.path LIKE %s""", (top_path, like))
            contexts = {int(r[0]): (str(r[1]), int(r[2]), int(r[3]), r[4]) for r in cur.fetchall()}
            cur.execute(f"""SELECT f.contextid, f.contenthash, f.filesize FROM {p}files f
                             WHERE f.contextid = ANY(%s) AND f.filesize > 0 AND f.contenthash <> %s
                               AND NOT (f.component = 'user' AND f.filearea = 'draft')""",
                        (list(contexts), EMPTY_HASH))
            rows = cur.fetchall()
    except psycopg.Error as exc:
        raise ScanError(f"drill-down of {school.code} failed: {_oneline(exc)}") from exc
    finally:
        conn.close()

    placement: dict[int, tuple[str, str, str, str]] = {}
    for ctxid, (path, _level, _inst, _name) in contexts.items():
        ids = [int(x) for x in path[len(top_path):].strip("/").split("/") if x]   # below the school's category
        year_key, year_name = "year:-", "(directly in the school category)"
        course_key, course_name = "category-files", "(category-level files: recycle bin, question banks)"
        if ids:
            first = contexts.get(ids[0])
            if first and first[1] == CONTEXT_COURSECAT:
                year_key, year_name = f"year:{first[2]}", str(first[3])
            for cid in ids:
                c = contexts.get(cid)
                if c and c[1] == CONTEXT_COURSE:
                    course_key, course_name = f"course:{c[2]}", str(c[3])
                    break
        placement[ctxid] = (year_key, year_name, course_key, course_name)
    for ctxid, h, size in rows:
        year_key, year_name, course_key, course_name = placement[int(ctxid)]
        year = root.children.setdefault(year_key, Node(year_key, year_name))
        course = year.children.setdefault(course_key, Node(course_key, course_name))
        for node in (root, year, course):
            node.add(str(h), int(size))
    return root
