"""A world of its own for the incident tests: two test schools (category +
cohort with unique idnumbers) and their users, created through Moodle by
fixture.php, and a temporary inventory whose schools are those two and whose
state_dir (journal, lock) is a temp directory. Torn down at the end."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from moodleops import REPO_ROOT
from moodleops.incident.runbook import Runbook
from moodleops.inventory import Inventory, load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import Site, site_of
from moodleops.webclient import MoodleSession, login

FIXTURE = str(Path(__file__).with_name("fixture.php"))
HELPER_SRC = REPO_ROOT / "moodleops" / "php" / "incident.php"

# name -> (schools, account type, suspended before the tests)
USERS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "a1": (("a",), "trainer", False),
    "a2": (("a",), "student", False),
    "a3": (("a",), "trainer", True),       # suspended beforehand: must stay so
    "a4": (("a",), "referent", False),     # edited by hand between suspend and reinstate
    "ab": (("a", "b"), "trainer", False),  # in two schools: left alone
    "b1": (("b",), "trainer", False),
    "b2": (("b",), "student", False),
    "e1": (("a",), "trainer", False),      # expiry: renewed
    "e2": (("a",), "referent", False),     # expiry: not renewed -> suspended
    "e3": (("a",), "student", False),      # expiry: student, never touched
    "e4": (("b",), "trainer", False),      # expiry: school without a list -> untouched
    "m1": (("b",), "student", False),      # messaging sender
}


@dataclass
class World:
    prefix: str
    inv: Inventory
    site: Site
    moodle: MoodleCLI
    password: str
    ids: dict[str, int]            # short name -> Moodle user id
    codes: dict[str, str]          # "a"/"b" -> school code
    category_ids: dict[str, int]
    journal_copy: Path
    inventory_dir: Path

    def username(self, short: str) -> str:
        return f"{self.prefix}{short}"

    def login(self, short: str) -> MoodleSession:
        return login(self.site.wwwroot, self.username(short), self.password, http=requests.Session())

    def runbook(self) -> Runbook:
        return Runbook(self.inv, self.site, journal_copy=self.journal_copy)

    def users_state(self) -> dict[str, dict[str, Any]]:
        snap = self.runbook().helper.read(userids=tuple(self.ids.values()))
        by_id = {u.id: u for u in snap.users}
        return {s: {"suspended": by_id[i].suspended, "timemodified": by_id[i].timemodified,
                    "messaging_blocked": by_id[i].messaging_blocked} for s, i in self.ids.items()}

    def hand_edit(self, short: str, **fields: Any) -> None:
        """What an administrator does in the user edit form (user_update_user)."""
        self.moodle.tool(FIXTURE, payload={"action": "hand_edit", "userid": self.ids[short], "fields": fields})

    def cli_args(self) -> list[str]:
        return ["--inventory", str(self.inventory_dir)]


def _write_inventory(tmp: Path, prefix: str, state_dir: Path) -> Path:
    root = tmp / "inventory"
    (root / "local" / "group_vars").mkdir(parents=True)
    src = REPO_ROOT / "inventory"
    for name in ("platform.yml", "moodle.yml"):
        shutil.copy(src / name, root / name)
    shutil.copy(src / "local" / "hosts.yml", root / "local" / "hosts.yml")
    gv = yaml.safe_load((src / "local" / "group_vars" / "all.yml").read_text()) or {}
    gv["moodleops_state_dir"] = str(state_dir)
    (root / "local" / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    up = prefix.upper()
    schools = [{"code": f"{prefix}_{x}", "name": f"Test school {x.upper()} {prefix}",
                "category_idnumber": f"TST-{up}-{x.upper()}", "cohort_idnumber": f"TST-{up}-{x.upper()}-C",
                "students": 1, "trainers": 1, "referents": [f"ref-{prefix}-{x}@example.invalid"]}
               for x in ("a", "b")]
    (root / "schools.yml").write_text(yaml.safe_dump({"schools": schools}))
    return root / "local"


def _install_helper(site: Site) -> None:
    installed = site.lib_dir / "php" / "incident.php"
    if not installed.is_file() or installed.read_bytes() != HELPER_SRC.read_bytes():
        # The playbook installs moodleops/php/*.php; keep the installed copy the one under test.
        shutil.copy(HELPER_SRC, installed)
        installed.chmod(0o644)


@pytest.fixture(autouse=True)
def _helper_under_test(request: pytest.FixtureRequest) -> None:
    """Before each stack test: a re-provisioning from another checkout of the shared
    stack may have installed another version of the helper meanwhile."""
    if "world" in request.fixturenames:
        _install_helper(request.getfixturevalue("world").site)


@pytest.fixture(scope="session")
def world(moodle: MoodleCLI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    _install_helper(moodle.site)
    prefix = "inc" + uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp("incident")
    env_dir = _write_inventory(tmp, prefix, tmp / "state")
    inv = load_inventory(str(env_dir))
    site = site_of(inv)
    password = "Pw-" + uuid.uuid4().hex[:12] + "!"
    codes = {"a": f"{prefix}_a", "b": f"{prefix}_b"}
    made = moodle.tool(FIXTURE, payload={
        "action": "setup", "prefix": prefix, "password": password,
        "account_type_field": inv.platform.accounts.account_type_field,
        "schools": [{"code": s.code, "name": s.name, "category_idnumber": s.category_idnumber,
                     "cohort_idnumber": s.cohort_idnumber} for s in inv.schools],
        "users": [{"username": prefix + short, "schools": [codes[x] for x in schools], "account_type": kind,
                   "suspended": before} for short, (schools, kind, before) in USERS.items()],
    })
    w = World(prefix=prefix, inv=inv, site=site, moodle=MoodleCLI(site), password=password,
              ids={short: made["users"][prefix + short] for short in USERS}, codes=codes,
              category_ids={x: made["schools"][codes[x]]["category_id"] for x in codes},
              journal_copy=tmp / "operator-copy", inventory_dir=env_dir)
    yield w
    moodle.tool(FIXTURE, payload={"action": "cleanup", "userids": list(w.ids.values()),
                                  "categoryids": list(w.category_ids.values())})
