"""Fixtures of the capacity tests: planning parameters, temporary inventories
pointing at test-only schools, and a billing world built THROUGH MOODLE."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from moodleops.capacity.config import CapacityParams, load_params

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory, load_inventory
from moodleops.moodle import MoodleCLI

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "billing_fixture.php"
# A stable test-only profile field (kept between runs: deleting a profile field
# rebuilds every course cache of the shared site).
TEST_TYPE_FIELD = "moodleopstestacctype"


@pytest.fixture(scope="session")
def params(local_inventory: Inventory) -> CapacityParams:
    return load_params(local_inventory)


MakeInventory = Callable[..., Inventory]


@pytest.fixture(scope="session")
def make_inventory(tmp_path_factory: pytest.TempPathFactory) -> MakeInventory:
    """A copy of the repository's inventory with other schools and platform
    overrides (dotted keys, e.g. {"accounts.account_type_field": "x"})."""
    def make(schools: list[dict[str, object]], overrides: dict[str, object] | None = None) -> Inventory:
        root = tmp_path_factory.mktemp("inventory")
        src = REPO_ROOT / "inventory"
        for name in ("moodle.yml", "capacity.yml"):
            shutil.copy(src / name, root / name)
        platform = yaml.safe_load((src / "platform.yml").read_text(encoding="utf-8"))
        for dotted, value in (overrides or {}).items():
            node = platform
            *path, last = dotted.split(".")
            for key in path:
                node = node[key]
            node[last] = value
        # Dates as text: the inventory reader wants quoted-or-plain ISO strings, as written.
        (root / "platform.yml").write_text(yaml.safe_dump(_dates_as_text(platform), sort_keys=False),
                                           encoding="utf-8")
        (root / "schools.yml").write_text(yaml.safe_dump({"schools": schools}, sort_keys=False), encoding="utf-8")
        shutil.copytree(src / "local", root / "local", ignore=shutil.ignore_patterns(".secrets"))
        if (src / "local" / ".secrets").is_dir():
            (root / "local" / ".secrets").symlink_to(src / "local" / ".secrets")
        return load_inventory(str(root / "local"))
    return make


def _dates_as_text(node: object) -> object:
    import datetime as dt
    if isinstance(node, dict):
        return {k: _dates_as_text(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_dates_as_text(v) for v in node]
    if isinstance(node, dt.date):
        return node.isoformat()
    return node


def school_entry(code: str, name: str, idnumber: str, students: int = 10) -> dict[str, object]:
    return {"code": code, "name": name, "category_idnumber": idnumber, "cohort_idnumber": idnumber,
            "students": students, "trainers": 2, "referents": [f"ref-{code}@example.invalid"]}


@dataclass(frozen=True)
class BillingWorld:
    inv: Inventory
    tag: str
    codes: tuple[str, str, str]
    users: dict[str, int]
    usernames: dict[str, str]    # role in the test -> Moodle username
    course: str                  # shortname of the course of school a
    course_bytes: int            # size of its one file


@pytest.fixture(scope="module")
def billing_world(moodle: MoodleCLI, make_inventory: MakeInventory) -> Iterator[BillingWorld]:
    """Three test schools (category + cohort each), students and a trainer made
    through Moodle's API: one student in two schools, one suspended student,
    one account without a type, one type written in another case."""
    tag = uuid.uuid4().hex[:8]
    codes = (f"capt{tag}a", f"capt{tag}b", f"capt{tag}c")
    idn = {c: f"CAPT-{tag}-{c[-1].upper()}" for c in codes}
    schools = [school_entry(c, f"Capacity test {c[-1].upper()} {tag}", idn[c]) for c in codes]
    a, b, c = codes
    plan = {  # role: (type, suspended, schools)
        "a1": ("student", False, [a]),
        "a2": ("student", False, [a]),
        "b1": ("student", False, [b]),
        "ab": ("student", False, [a, b]),          # in two schools: billed once, to a (joined first)
        "bsusp": ("student", True, [b]),           # suspended: not billed
        "atrainer": ("trainer", False, [a]),       # hosted account: not billed
        "cnotype": (None, False, [c]),             # no account type: not billed, reported
        "ccase": ("Student", False, [c]),          # type compared case-insensitively
    }
    usernames = {role: f"capt{tag}{role}" for role in plan}
    course, course_bytes = f"capt{tag}course", 123457
    payload = {
        "action": "create", "field": TEST_TYPE_FIELD,
        "schools": [{"code": s["code"], "name": s["name"], "category_idnumber": s["category_idnumber"],
                     "cohort_idnumber": s["cohort_idnumber"]} for s in schools],
        "users": [{"username": usernames[r], "suspended": susp, "cohorts": [idn[x] for x in sch],
                   **({"type": t} if t else {})} for r, (t, susp, sch) in plan.items()],
        "courses": [{"shortname": course, "fullname": f"Capacity test course {tag}",
                     "category_idnumber": idn[a], "bytes": course_bytes}],
    }
    cleanup = {"action": "cleanup", "usernames": list(usernames.values()),
               "cohorts": list(idn.values()), "categories": list(idn.values())}
    try:
        made = moodle.tool(str(FIXTURE), payload=payload, timeout=300)
        inv = make_inventory(schools, {"accounts.account_type_field": TEST_TYPE_FIELD})
        yield BillingWorld(inv, tag, codes, made["users"], usernames, course, course_bytes)
    finally:
        moodle.tool(str(FIXTURE), payload=cleanup, timeout=300)
