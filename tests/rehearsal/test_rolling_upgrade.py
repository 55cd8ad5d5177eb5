"""Demonstration 3 of #13: rolling upgrades through lb1 on the rehearsal's two
web nodes, from the older releases of ../shared/artifacts/older the platform
was installed at (conftest.py's start point), while a bounded probe asks lb1
for the login page four times a second: a plugin (its database steps run),
then a core upgrade that fails on web2 after web1 switched, and one whose
run-once step fails after upgrade.php (injected faults: both nodes end on the
old release, the database restored, maintenance on), then the core upgrade. Every answer is Moodle's maintenance page or a
correct page, never a 5xx or a blank page; the run log on web1 gives the
downtime, which the probe measures too. The platform lock is taken on web1
for the operator's side: a second upgrade started meanwhile is refused.

Runs first among the platform's tests (RUNS_FIRST): the others see the pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Self

import pytest
import requests
import yaml

from moodleops import REPO_ROOT

from .rehearsal_run import INV, WWWROOT, Platform, moodleops, on

RUNS_FIRST = True
PAGE = "/login/index.php"
INTERVAL_S = 0.25
PROBE_LIMIT_S = 1200          # the probe stops by itself after this, whatever happens
LAUNCHER = "sudo /usr/local/sbin/moodleops"
UPGRADE = ("-i", INV.env, "platform", "upgrade", "--apply", "--operator", "pytest")


def _kind(resp: requests.Response) -> str:
    node = resp.headers.get("X-Served-By")
    if node is None:
        return f"bad {resp.status_code} from lb1 itself"
    if resp.status_code == 200 and 'name="logintoken"' in resp.text:
        return f"page {node}"
    # Moodle's maintenance page: 503 with Retry-After and the message (lib/setup.php).
    if resp.status_code == 503 and resp.headers.get("Retry-After") and resp.text.strip():
        return f"maintenance {node}"
    what = " ".join(re.sub(r"<[^>]+>", " ", resp.text).split())[:160]
    return f"bad {resp.status_code} ({len(resp.content)} bytes) {node}: {what}"


@dataclass
class Probe:
    """The login page through lb1 every INTERVAL_S, in a thread, until stopped."""
    ca: Path
    answers: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        http = requests.Session()
        http.trust_env = False
        http.verify = str(self.ca)
        ends = time.monotonic() + PROBE_LIMIT_S
        while not self._stop.is_set() and time.monotonic() < ends:
            try:
                kind = _kind(http.get(f"{WWWROOT}{PAGE}", timeout=10, allow_redirects=False))
            except requests.RequestException as exc:
                kind = f"bad {type(exc).__name__}"
            self.answers.append((time.monotonic(), kind))
            self._stop.wait(INTERVAL_S)

    def seen(self) -> Counter[str]:
        return Counter(kind for _, kind in self.answers)

    def bad(self) -> list[str]:
        return [kind for _, kind in self.answers if kind.startswith("bad")]

    def downtime_s(self) -> float:
        """From the first maintenance answer to the first correct page after the last one."""
        times = [t for t, kind in self.answers if kind.startswith("maintenance")]
        if not times:
            return 0.0
        after = [t for t, kind in self.answers if kind.startswith("page") and t > times[-1]]
        return (after[0] if after else times[-1]) - times[0]


def _runs() -> list[dict]:
    log = on("web1", "sudo cat /var/lib/moodleops/upgrades.jsonl")
    return [json.loads(line) for line in log.stdout.splitlines() if line.strip()]


def _current() -> dict[str, str]:
    return {node: on(node, "readlink /srv/moodle/current").stdout.strip() for node in ("web1", "web2")}


def _version(component: str = "") -> Decimal:
    """The version Moodle's database records for core (or a plugin), read through Moodle on web1."""
    comp = f" --component={component}" if component else ""
    got = on("web1", f"sudo -u www-data php /srv/moodle/current/admin/cli/cfg.php{comp} --name=version")
    assert got.returncode == 0, got.stdout + got.stderr
    return Decimal(got.stdout.strip())


@pytest.fixture(scope="module")
def start(platform: Platform) -> dict[str, str]:
    if not platform.start:
        pytest.fail("the platform was not installed at the older start point (conftest.py's _start_point)")
    return platform.start


def test_1_plugin_upgrade_node_by_node_serves_only_pages_or_maintenance(
        platform: Platform, start: dict[str, str], tmp_path: Path) -> None:
    assert _version("block_completion_progress") == Decimal(2023110100)
    # The start point with only block_completion_progress at its pin (a release with database steps).
    step = tmp_path / "plugin-step.yml"
    pins = yaml.safe_load(Path(start["MOODLEOPS_PINS"]).read_text(encoding="utf-8"))
    pinned = next(p for p in INV.plugins if p.component == "block_completion_progress")
    for pin in pins["plugins"]:
        if pin["component"] == pinned.component:
            pin.update(file=pinned.file, sha256=pinned.sha256, version=pinned.version_text)
    step.write_text(yaml.safe_dump(pins, sort_keys=False), encoding="utf-8")
    env = {**start, "MOODLEOPS_PINS": str(step)}
    before = _current()

    log = tmp_path / "first-upgrade.log"
    with Probe(platform.ca) as probe, log.open("w", encoding="utf-8") as out_file:
        first = subprocess.Popen([sys.executable, "-m", "moodleops.cli", *UPGRADE], cwd=REPO_ROOT, text=True,
                                 stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.STDOUT,
                                 env={**os.environ, **env})
        # Once the site is in maintenance the first run surely holds the lock (taken on web1).
        deadline = time.monotonic() + 600
        while not any(k.startswith("maintenance") for k in probe.seen()) and time.monotonic() < deadline \
                and first.poll() is None:
            time.sleep(0.5)
        second = moodleops(*UPGRADE, env=env)
        first.wait(timeout=1800)
    out = log.read_text(encoding="utf-8")
    assert first.returncode == 0, out[-6000:]
    assert second.returncode == 1, second.stdout + second.stderr
    assert "platform lock is held by" in second.stderr and "on web1" in second.stderr, second.stderr

    assert not probe.bad(), probe.seen()
    seen = probe.seen()
    assert {"page web1", "page web2"} <= set(seen) and any(k.startswith("maintenance") for k in seen), seen
    assert _version("block_completion_progress") == pinned.version
    after = _current()
    assert after["web1"] == after["web2"] != before["web1"], (before, after)
    run = _runs()[-1]
    assert run["outcome"] == "success" and run["operator"] == "pytest", run
    assert run["changes"] == [{"component": "block_completion_progress", "from": "2023110100",
                               "to": pinned.version_text}], run["changes"]
    print(f"\nplugin upgrade, two web nodes: maintenance {run['maintenance_s']} s by the run log, "
          f"{probe.downtime_s():.1f} s seen through lb1; whole run {run['duration_s']} s; answers {dict(seen)}")


@pytest.mark.parametrize("fault, error", [
    # web2's switch fails once web1 has switched and reloaded;
    ("upgrade-switch:web2", "code switch failed on web2"),
    # a run-once step fails after upgrade.php on web1 (as a check would): only
    # web1 enters the rescue, and web2 must be rolled back all the same.
    ("upgrade-after-switch", "a run-once step failed after upgrade.php"),
])
def test_2_a_failure_after_web1_switched_leaves_both_on_the_old_release(
        platform: Platform, start: dict[str, str], fault: str, error: str) -> None:
    before, core = _current(), _version()
    # The pins (4.1.11), with the fault.
    env = {"MOODLEOPS_ARTIFACTS": start["MOODLEOPS_ARTIFACTS"], "MOODLEOPS_FAULT": fault}
    with Probe(platform.ca) as probe:
        failed = moodleops(*UPGRADE, env=env)
        time.sleep(12)      # the maintenance flag reaching both nodes through the network filesystem
    assert failed.returncode == 1, (failed.stdout + failed.stderr)[-6000:]
    assert "ROLLED BACK." in failed.stdout + failed.stderr, (failed.stdout + failed.stderr)[-3000:]
    assert _current() == before
    assert _version() == core
    run = _runs()[-1]
    assert run["outcome"] == "rolled-back", run
    assert run["rollback"]["database"] == "restored" and run["rollback"]["nodes_on_new_code"] == [], run
    assert error in run["error"], run["error"]
    assert not probe.bad(), probe.seen()
    last = {kind for _, kind in probe.answers[-8:]}
    assert last == {"maintenance web1", "maintenance web2"}, probe.seen()
    print(f"\nfailed core upgrade rolled back: maintenance on since {run['maintenance_s']} s "
          f"(still on); whole run {run['duration_s']} s; answers {dict(probe.seen())}")
    # A sysadmin has looked: the site is opened again (cron resumed) on the old release,
    # each node serving pages once it sees the flag gone (its network filesystem cache).
    opened = on("web1", f"{LAUNCHER} platform maintenance off")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    with Probe(platform.ca) as after:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and {k for _, k in after.answers[-6:]} != {"page web1", "page web2"}:
            time.sleep(1)
    assert not after.bad() and {k for _, k in after.answers[-6:]} == {"page web1", "page web2"}, after.seen()


def test_3_core_upgrade_node_by_node_serves_only_pages_or_maintenance(
        platform: Platform, start: dict[str, str]) -> None:
    before = _current()
    with Probe(platform.ca) as probe:
        up = moodleops(*UPGRADE, env={"MOODLEOPS_ARTIFACTS": start["MOODLEOPS_ARTIFACTS"]})
    assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
    assert not probe.bad(), probe.seen()
    seen = probe.seen()
    assert {"page web1", "page web2"} <= set(seen) and any(k.startswith("maintenance") for k in seen), seen
    after = _current()
    assert after["web1"] == after["web2"] != before["web1"], (before, after)
    assert _version() == INV.core.version
    run = _runs()[-1]
    assert run["outcome"] == "success", run
    assert {c["component"] for c in run["changes"]} == {"core", "mod_hotpot", "format_onetopic"}, run["changes"]
    print(f"\ncore upgrade, two web nodes: maintenance {run['maintenance_s']} s by the run log, "
          f"{probe.downtime_s():.1f} s seen through lb1; whole run {run['duration_s']} s; answers {dict(seen)}")


