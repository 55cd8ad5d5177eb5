"""The storage tests' own world in the shared Moodle, as data: two temporary
schools (top-level categories with a unique per-run idnumber), courses, files
(one content twice in a school, one in both schools), a course for the recycle
bin, users with private files and a draft. conftest.py has Moodle build it."""

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
    built: dict[str, Any] = field(default_factory=dict)

    @property
    def recycle_files(self) -> list[dict[str, Any]]:
        return list(self.built["recycle"])


def _content(tag: str, name: str, size: int) -> str:
    head = f"{tag}:{name}:"
    return head + "x" * (size - len(head))


def make_world(tag: str) -> World:
    a = SchoolSpec(code=f"t5{tag}_a", category_idnumber=f"T5-{tag}-A", cohort_idnumber=f"T5-{tag}-A-C",
                   alert_bytes=5000)
    b = SchoolSpec(code=f"t5{tag}_b", category_idnumber=f"T5-{tag}-B", cohort_idnumber=f"T5-{tag}-B-C",
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
    ]
    users = [
        {"username": f"t5{tag}u1", "school": 0, "suspended": False, "type": "trainer",
         "private": _content(tag, "private-u1", 321), "draft": _content(tag, "draft-u1", 123)},
        {"username": f"t5{tag}u2", "school": 0, "suspended": True, "type": "student"},
        {"username": f"t5{tag}u3", "school": 1, "suspended": False, "type": "student",
         "private": _content(tag, "private-u3", 222)},
        {"username": f"t5{tag}u4", "school": 1, "suspended": False, "type": "referent"},
    ]
    return World(tag=tag, schools=(a, b), uploads=uploads,
                 recycle_content=_content(tag, "recycled", 999), users=users)


