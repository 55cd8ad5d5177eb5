"""Test data for load runs, created and removed through Moodle
(moodleops/php/loadtest_fixture.php: Moodle's testing data generator,
delete_course(), delete_user()), never by SQL. Everything carries the run's
prefix and a marker, so cleanup removes only what prepare made."""

from __future__ import annotations

import json
import random
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moodleops.loadtests.model import FileSizes

from moodleops.inventory import Inventory, is_loopback
from moodleops.moodle import MoodleCLI
from moodleops.rehearsal.spec import own_addresses

PREFIX_RE = re.compile(r"^lt[a-z0-9]{3,20}$")
HELPER = "loadtest_fixture"


class LoadtestError(RuntimeError):
    """A refused or failed load-test action: one line for the operator."""


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise LoadtestError(f"--prefix: {prefix!r} is not valid (lt followed by 3 to 20 of [a-z0-9], e.g. lt2025a)")
    return prefix


def new_prefix() -> str:
    return "lt" + secrets.token_hex(4)


def guard_inventory(inv: Inventory, force: bool, action: str) -> None:
    """Load tests create accounts and load a platform: only on this machine or
    the rehearsal's own containers unless forced."""
    if inv.is_loopback_only or force:
        return
    if {h.address for h in inv.hosts} <= own_addresses(inv):
        return
    remote = sorted({h.address for h in inv.hosts if not is_loopback(h.address)})
    raise LoadtestError(f"inventory {inv.env!r} is not loopback-only (hosts {', '.join(remote[:3])}"
                        f"{'...' if len(remote) > 3 else ''}): refusing to {action}; "
                        "pass --force-production to act on that platform")


def guard_target(url: str, force: bool, allowed: frozenset[str] = frozenset()) -> str:
    """`url`, unless it leaves this machine and is none of `allowed` (the
    rehearsal's containers) without `force`."""
    host = urlsplit(url).hostname or ""
    if not host:
        raise LoadtestError(f"--target: {url!r} is not valid (an http(s) URL)")
    if not is_loopback(host) and host not in allowed and not force:
        raise LoadtestError(f"--target: {url!r} is not a loopback address (127.0.0.0/8, ::1, localhost) "
                            "nor a container of this inventory's rehearsal; load goes elsewhere only with "
                            "--force-production")
    return url.rstrip("/")


def fixture_file(directory: Path, prefix: str) -> Path:
    return directory / f"{prefix}.json"


def prepare(cli: MoodleCLI, prefix: str, *, students: int, trainers: int, questions: int,
            directory: Path, schools: list[str] | None = None, courses: int = 1,
            sizes: FileSizes | None = None) -> dict[str, Any]:
    """Create the fixture in Moodle and record it (with the accounts' password,
    mode 0600) in `directory`; returns the record. `courses` courses spread over
    the `schools` (categories); each course's document has a size drawn from
    `sizes` (the platform's file-size quantiles), and the assignments accept
    the largest size they name."""
    check_prefix(prefix)
    path = fixture_file(directory, prefix)
    if path.exists():
        raise LoadtestError(f"--prefix: {prefix!r} is already prepared ({path}); run cleanup first")
    password = "Lt-" + secrets.token_urlsafe(12) + "9a"
    rng = random.Random()
    resource_bytes = [sizes.draw(rng.random()) if sizes else 20000 for _ in range(courses)]
    max_upload = int(max(b for _, b in sizes.quantiles) * 2) if sizes else 1048576
    result: dict[str, Any] = cli.tool(HELPER, "prepare", payload={
        "prefix": prefix, "password": password, "students": students, "trainers": trainers,
        "questions": questions, "schools": schools or ["Ecole"], "courses": courses,
        "resource_bytes": resource_bytes, "max_upload_bytes": max_upload})
    record = {**result, "password": password, "wwwroot": cli.site.wwwroot}
    save_record(directory, prefix, record)
    return record


def save_record(directory: Path, prefix: str, record: dict[str, Any]) -> None:
    """The fixture's record (it holds the accounts' password), mode 0600, whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    path = fixture_file(directory, prefix)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(path)


#: What a run reads from a prepared fixture's record (written by `loadtest prepare`).
FIXTURE_KEYS = ("password", "quiz_questions", "students", "trainers")


def load_fixture(directory: Path, prefix: str) -> dict[str, Any]:
    path = fixture_file(directory, check_prefix(prefix))
    if not path.is_file():
        raise LoadtestError(f"--prefix: {prefix!r} has no fixture in {directory} "
                            "(run `moodleops loadtest prepare --prefix ...` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadtestError(f"{path}: not a fixture record ({exc}); run `moodleops loadtest prepare "
                            f"--prefix {prefix}` again") from None
    missing = [k for k in FIXTURE_KEYS if k not in data] if isinstance(data, dict) else list(FIXTURE_KEYS)
    if missing:
        raise LoadtestError(f"{path}: not a prepared fixture (no {', '.join(missing)}); run `moodleops "
                            f"loadtest prepare --prefix {prefix}` again")
    return dict(data)


def inspect(cli: MoodleCLI, prefix: str) -> dict[str, Any]:
    """What the simulated users left in Moodle: finished attempts, forum replies, submissions."""
    result: dict[str, Any] = cli.tool(HELPER, "inspect", payload={"prefix": check_prefix(prefix)})
    return result


def cleanup(cli: MoodleCLI, prefix: str, *, apply: bool, directory: Path) -> dict[str, Any]:
    result: dict[str, Any] = cli.tool(HELPER, "cleanup", payload={"prefix": check_prefix(prefix), "apply": apply})
    if apply:
        fixture_file(directory, prefix).unlink(missing_ok=True)
    return result
