"""Benchmark: suspend and reinstate a school of N users (default 1,000) with
`moodleops incident`, side by side with Moodle's bulk tool
admin/tool/uploaduser/cli/uploaduser.php (--uutype=3 --uuupdatetype=1
--uuallowsuspends=1, CSV username,suspended) doing the same suspension.

10 % of the users are suspended beforehand: an exact reinstatement leaves them
suspended; the bulk tool fed suspended=0 reactivates them (counted below).
Target: each of suspend and reinstate within 1.5x the bulk tool's time.

Creates its own school (category + cohort with a unique idnumber) and users
through Moodle (tests/incident/fixture.php), removes them at the end.

  .venv/bin/python bench/incident_suspend.py [--users 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from moodleops import REPO_ROOT
from moodleops.incident.runbook import Runbook, Who
from moodleops.inventory import load_inventory
from moodleops.moodle import MoodleCLI
from moodleops.site import site_of

FIXTURE = str(REPO_ROOT / "tests" / "incident" / "fixture.php")
UPLOADUSER = "admin/tool/uploaduser/cli/uploaduser.php"
WHO = Who(reason="benchmark", ticket="BENCH", operator="bench")


def temp_inventory(tmp: Path, code: str, idnumber: str) -> Path:
    """The local inventory with one bench school, and state_dir under tmp."""
    src = REPO_ROOT / "inventory"
    root = tmp / "inventory"
    (root / "local" / "group_vars").mkdir(parents=True)
    for name in ("platform.yml", "moodle.yml"):
        shutil.copy(src / name, root / name)
    shutil.copy(src / "local" / "hosts.yml", root / "local" / "hosts.yml")
    gv = yaml.safe_load((src / "local" / "group_vars" / "all.yml").read_text()) or {}
    gv["moodleops_state_dir"] = str(tmp / "state")
    (root / "local" / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    (root / "schools.yml").write_text(yaml.safe_dump({"schools": [{
        "code": code, "name": f"Bench {code}", "category_idnumber": idnumber, "cohort_idnumber": idnumber + "-C",
        "students": 1, "trainers": 1, "referents": [f"ref-{code}@example.invalid"]}]}))
    return root / "local"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    n = ap.parse_args().users
    prefix = "bench" + uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env_dir = temp_inventory(tmp, f"{prefix}_s", f"BENCH-{prefix.upper()}")
        inv = load_inventory(str(env_dir))
        site = site_of(inv)
        moodle = MoodleCLI(site)
        school = inv.schools[0]
        names = [f"{prefix}u{i:04d}" for i in range(n)]
        pre = set(names[::10])
        t0 = time.monotonic()
        made = moodle.tool(FIXTURE, payload={
            "action": "setup", "prefix": prefix, "with_course": False,
            "account_type_field": inv.platform.accounts.account_type_field,
            "schools": [{"code": school.code, "name": school.name, "category_idnumber": school.category_idnumber,
                         "cohort_idnumber": school.cohort_idnumber}],
            "users": [{"username": u, "schools": [school.code], "account_type": "student", "suspended": u in pre}
                      for u in names]})
        print(f"setup: {n} users ({len(pre)} suspended beforehand) in {time.monotonic() - t0:.1f} s")
        rb = Runbook(inv, site, journal_copy=tmp / "copy")
        ids = tuple(made["users"].values())

        def suspended() -> set[str]:
            return {u.username for u in rb.helper.read(userids=ids).users if u.suspended}

        try:
            t = time.monotonic()
            out = rb.run(rb.suspend(schools=(school.code,)), apply=True, who=WHO)
            ours_suspend = time.monotonic() - t
            assert suspended() == set(names) and out.count("changed") == n - len(pre)
            t = time.monotonic()
            assert out.incident is not None
            rb.run(rb.reinstate(out.incident), apply=True, who=WHO)
            ours_reinstate = time.monotonic() - t
            ours_exact = suspended() == pre

            csv_path = tmp / "users.csv"
            tmp.chmod(0o755)   # the bulk tool runs as the web user and must read the CSV
            # The tool turns every profile field into a "default" option and validates it even when
            # defaults are not used (--uuupdatetype=1): give the account-type menu a valid value.
            rules = inv.platform.accounts
            args = ("--file=" + str(csv_path), "--uutype=3", "--uuupdatetype=1", "--uuallowsuspends=1",
                    f"--profile_field_{rules.account_type_field}={rules.student_types[0]}")
            csv_path.write_text("username,suspended\n" + "".join(f"{u},1\n" for u in names))
            csv_path.chmod(0o644)
            t = time.monotonic()
            moodle.run(UPLOADUSER, *args)
            tool_suspend = time.monotonic() - t
            assert suspended() == set(names)
            csv_path.write_text("username,suspended\n" + "".join(f"{u},0\n" for u in names))
            t = time.monotonic()
            moodle.run(UPLOADUSER, *args)
            tool_reinstate = time.monotonic() - t
            wrongly = len(pre - suspended())
        finally:
            moodle.tool(FIXTURE, payload={"action": "cleanup", "userids": list(ids),
                                          "categoryids": [made["schools"][school.code]["category_id"]]})

    print(f"{'':28}{'suspend':>10}{'reinstate':>11}  exact")
    print(f"{'moodleops incident':28}{ours_suspend:>9.1f}s{ours_reinstate:>10.1f}s  "
          f"{'yes' if ours_exact else 'NO'}")
    print(f"{'uploaduser.php (Moodle)':28}{tool_suspend:>9.1f}s{tool_reinstate:>10.1f}s  "
          f"no: {wrongly} of {len(pre)} pre-suspended users reactivated")
    r1, r2 = ours_suspend / tool_suspend, ours_reinstate / tool_reinstate
    print(f"ratio: suspend {r1:.2f}x, reinstate {r2:.2f}x (target <= 1.5x)")
    return 0 if ours_exact and r1 <= 1.5 and r2 <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
