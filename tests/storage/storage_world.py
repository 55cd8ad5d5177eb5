"""The storage tests' own world in the shared Moodle, as data: three temporary
schools (categories with a unique per-run idnumber; C is moved under B),
courses, files (one content twice in a school, one in both schools), a course
for the recycle bin, users with private files and a draft, and the cases of
issue 15 (an upload through a draft, edit forms opened on areas with files, an
alias to another school's file, a teacher's course backup). conftest.py has
Moodle build it; `owned_rows` says, from what Moodle reported storing, who owns
each row, so tests compute the figures without the scanner's logic."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moodleops.exporters.storage_model import SchoolSpec

FIXTURE = Path(__file__).with_name("fixture_storage.php")


@dataclass
class Upload:
    school: int
    where: str            # course | module | category
    content: str
    year: int = 0
    course: str = ""

    @property
    def size(self) -> int:
        return len(self.content.encode())

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.content.encode()).hexdigest()


@dataclass
class World:
    tag: str
    schools: tuple[SchoolSpec, ...]
    uploads: list[Upload]
    recycle_content: str
    users: list[dict[str, Any]]
    cases: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)

    @property
    def recycle_files(self) -> list[dict[str, Any]]:
        return list(self.built["recycle"])

    def cases_hash(self, name: str) -> str:
        return hashlib.sha1(self.cases[name]["content"].encode()).hexdigest()

    def users_draft_size(self) -> int:
        """Bytes only in drafts: the users' own draft files (nothing else holds them)."""
        return sum(len(u["draft"].encode()) for u in self.users if "draft" in u)

    def owned_rows(self) -> list[tuple[str, str, int]]:
        """(owner, contenthash, filesize) of every row the world made, with content;
        owner: "school:<index>", "draft" or "users"."""
        b = self.built
        rows = [(f"school:{u.school}", f["contenthash"], f["filesize"]) for u, f in zip(self.uploads, b["files"],
                                                                                            strict=True)]
        rows += [("school:0", f["contenthash"], f["filesize"]) for f in self.recycle_files]
        for u in b["users"]:
            rows += [("draft" if f["filearea"] == "draft" else "users", f["contenthash"], f["filesize"])
                     for f in u["files"]]
        c = b.get("cases")
        if c:
            rows += [("school:0", f["contenthash"], f["filesize"]) for f in c["upload"]["saved"]]
            rows += [("draft", f["contenthash"], f["filesize"]) for f in c["upload"]["draft"]]
            rows += [("draft", f["contenthash"], f["filesize"]) for p in c["prepared"] for f in p["draft"]]
            rows += [("school:1", f["contenthash"], f["filesize"]) for f in c["alias"]]
            # The backup's file name carries its course id: it is the course's school's.
            rows += [("school:0", f["contenthash"], f["filesize"]) for f in c["backup"]["files"]]
        return [r for r in rows if r[2] > 0]


def _content(tag: str, name: str, size: int) -> str:
    head = f"{tag}:{name}:"
    return head + "x" * (size - len(head))


def make_world(tag: str) -> World:
    a = SchoolSpec(code=f"t5{tag}_a", category_idnumber=f"T5-{tag}-A", cohort_idnumber=f"T5-{tag}-A-C",
                   alert_bytes=5000)
    b = SchoolSpec(code=f"t5{tag}_b", category_idnumber=f"T5-{tag}-B", cohort_idnumber=f"T5-{tag}-B-C",
                   alert_bytes=10**9)
    c = SchoolSpec(code=f"t5{tag}_c", category_idnumber=f"T5-{tag}-C", cohort_idnumber=f"T5-{tag}-C-C",
                   alert_bytes=10**9)
    same_twice = _content(tag, "same-twice", 1501)     # twice in school A (two courses)
    shared = _content(tag, "shared-ab", 2002)          # in school A and school B (even: exact halves)
    uploads = [
        Upload(0, "course", same_twice, year=0, course=f"t5{tag}-A1-c1"),
        Upload(0, "module", _content(tag, "module-a", 733), year=0, course=f"t5{tag}-A1-c1"),
        Upload(0, "course", shared, year=0, course=f"t5{tag}-A1-c1"),
        Upload(0, "course", same_twice, year=1, course=f"t5{tag}-A2-c1"),
        Upload(0, "category", _content(tag, "category-a", 411)),
        Upload(1, "course", shared, year=0, course=f"t5{tag}-B1-c1"),
        Upload(1, "module", _content(tag, "module-b", 957), year=0, course=f"t5{tag}-B1-c1"),
        Upload(2, "course", _content(tag, "course-c", 655), year=0, course=f"t5{tag}-C1-c1"),
        Upload(2, "category", _content(tag, "category-c", 377)),
    ]
    cases = {
        "teacher": 0,
        "upload": {"course": f"t5{tag}-A1-c1", "content": _content(tag, "uploaded-a", 845)},
        "prepare": [6, 2],          # module-b's area (B); A1-c1's overview files (same-twice, shared-ab)
        "alias": {"target": 1, "target_name": "f1.txt", "course": f"t5{tag}-B1-c1"},   # module-a of A, from B
        "backup": {"course": f"t5{tag}-A1-c1"},
        "moved": {"school": 2, "under": 1},
    }
    users = [
        {"username": f"t5{tag}u1", "school": 0, "suspended": False, "type": "trainer",
         "private": _content(tag, "private-u1", 321), "draft": _content(tag, "draft-u1", 123)},
        {"username": f"t5{tag}u2", "school": 0, "suspended": True, "type": "student"},
        {"username": f"t5{tag}u3", "school": 1, "suspended": False, "type": "student",
         "private": _content(tag, "private-u3", 222)},
        {"username": f"t5{tag}u4", "school": 1, "suspended": False, "type": "referent"},
    ]
    return World(tag=tag, schools=(a, b, c), uploads=uploads,
                 recycle_content=_content(tag, "recycled", 999), users=users, cases=cases)


