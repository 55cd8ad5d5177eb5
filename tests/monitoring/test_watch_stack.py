"""The health and abuse exporter against the real local Moodle: messages sent
with Moodle's messaging API make the mass-mailing alert's expression match in
a real Prometheus; failed logins over HTTP raise the school's series; a stopped
cron shows as lag; a scrape stays fast while reads run; every dashboard query
parses and returns series in the stack's own Prometheus."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from moodleops.exporters import dashboard
from moodleops.exporters.storage_model import SchoolSpec
from moodleops.exporters.watch_config import thresholds, watch_config
from moodleops.exporters.watch_exporter import WatchExporter
from moodleops.exporters.watch_model import WatchConfig
from prom_loopback import promql, running_prometheus, wait_for

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory
from moodleops.moodle import MoodleCLI
from moodleops.platform.ansible_view import role_vars
from moodleops.platform.monitoring_health import monitoring_settings
from moodleops.site import Site

pytestmark = pytest.mark.stack
FIXTURE = Path(__file__).with_name("fixture_watch.php")
RULES = REPO_ROOT / "exporters" / "rules" / "moodle.yml"
# The test Prometheus evaluates moodle.yml's own expressions with this `for:` for the
# mass-mailing alert, so that it goes from pending to firing within the test; production
# keeps the file's (2m), checked by promtool in test_watch_rules.py.
MASS_MAILING_FOR = "5s"


@dataclass
class WatchWorld:
    school: SchoolSpec
    mailer: str
    recipient: str
    victim: str
    ghost: str
    password: str

    @property
    def usernames(self) -> list[str]:
        return [self.mailer, self.recipient, self.victim, self.ghost]


@pytest.fixture(scope="module")
def world(moodle: MoodleCLI) -> Iterator[WatchWorld]:
    tag = uuid.uuid4().hex[:6]
    w = WatchWorld(school=SchoolSpec(code=f"wt{tag}", category_idnumber=f"WATCH-{tag}",
                                     cohort_idnumber=f"WATCH-{tag}", alert_bytes=1),
                   mailer=f"wtm{tag}", recipient=f"wtr{tag}", victim=f"wtv{tag}", ghost=f"wtg{tag}",
                   password=f"Pw-{uuid.uuid4().hex}")
    try:
        moodle.tool(str(FIXTURE), timeout=300, payload={
            "action": "build", "cohort": w.school.cohort_idnumber,
            "users": [{"username": u, "password": w.password} for u in w.usernames]})
        yield w
    finally:
        moodle.tool(str(FIXTURE), timeout=300, payload={"action": "cleanup", "cohort": w.school.cohort_idnumber,
                                                        "users": w.usernames})


@pytest.fixture(scope="module")
def cfg(local_inventory: Inventory, site: Site, world: WatchWorld) -> WatchConfig:
    fpm = role_vars(local_inventory, "platform_defaults", "web", ("php_fpm_status_path",))["php_fpm_status_path"]
    base = watch_config(local_inventory, site, fpm_status_url=site.wwwroot + fpm)
    return dataclasses.replace(base, schools=(*base.schools, world.school))


@pytest.fixture(scope="module")
def exporter(cfg: WatchConfig, local_inventory: Inventory) -> Iterator[tuple[WatchExporter, str]]:
    ex = WatchExporter(cfg, thresholds(local_inventory), interval_s=2)
    assert ex.read_once(), ex.state().last_error
    server, _ = ex.serve("127.0.0.1", 0)
    ex.start()
    try:
        yield ex, f"127.0.0.1:{server.server_port}"   # type: ignore[attr-defined]
    finally:
        ex.stop()
        server.shutdown()   # type: ignore[attr-defined]


def rules_for_test() -> dict[str, Any]:
    """moodle.yml as committed, but the mass-mailing alert's `for:` shortened."""
    doc = copy.deepcopy(yaml.safe_load(RULES.read_text()))
    rule = next(r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "MoodleMassMailingByUser")
    assert rule["for"] == "2m", "production `for:` changed: update docs/watch.md and this test"
    rule["for"] = MASS_MAILING_FOR
    return doc


@pytest.fixture(scope="module")
def prom(exporter: tuple[WatchExporter, str], module_alertmanager: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus of the test's own (loopback) scraping the test's exporter every
    second, moodle.yml's rules evaluated every second, alerts sent to a real Alertmanager."""
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "alerting": {"alertmanagers": [{"static_configs": [
                  {"targets": [module_alertmanager.removeprefix("http://")]}]}]},
              "scrape_configs": [{"job_name": "moodle_watch", "static_configs": [{"targets": [exporter[1]]}]}]}
    with running_prometheus(tmp_path_factory.mktemp("prom"), config, {"moodle.yml": rules_for_test()}) as base:
        assert wait_for(base, 'up{job="moodle_watch"} == 1', 40), "the test Prometheus does not scrape"
        yield base


def alert_expr(name: str) -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return next(str(r["expr"]) for g in groups for r in g["rules"] if r.get("alert") == name)


def _alert(prom: str, name: str, username: str) -> dict[str, Any] | None:
    alerts = requests.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return next((a for a in alerts if a["labels"]["alertname"] == name and a["labels"].get("username") == username),
                None)


def test_mass_mailing_through_moodle_fires_the_alert_and_scopes_the_runbook(
        world: WatchWorld, moodle: MoodleCLI, prom: str, module_alertmanager: str,
        local_inventory: Inventory) -> None:
    threshold = local_inventory.platform.watch.mass_mailing_per_hour
    # A mass mailer whose account is deleted since (Moodle renames it email.timestamp):
    # its messages are still in the hour's log, but it is nobody's top sender, so no
    # alert names an account the runbook cannot act on.
    ghost = moodle.tool(str(FIXTURE), timeout=600, payload={
        "action": "send", "from": world.ghost, "to": world.recipient, "count": threshold + 20})
    assert ghost["sent"] == threshold + 20
    moodle.tool(str(FIXTURE), timeout=300, payload={"action": "cleanup", "cohort": f"no-such-{world.ghost}",
                                                        "users": [world.ghost]})
    sent = moodle.tool(str(FIXTURE), timeout=600, payload={
        "action": "send", "from": world.mailer, "to": world.recipient, "count": threshold + 20})
    assert sent["sent"] == threshold + 20
    mine = f'moodle_top_sender_messages_sent_1h{{username="{world.mailer}"}}'
    got = wait_for(prom, f"{mine} >= {threshold + 20}", 60)
    assert got and got[0]["metric"]["school"] == world.school.code, got
    ghosts = promql(prom, f'moodle_top_sender_messages_sent_1h{{username=~"{world.ghost}.*"}}')
    assert ghosts == [], ghosts
    seen = time.monotonic()
    school_total = promql(prom, f'moodle_messages_sent_1h{{school="{world.school.code}",kind="message"}}')
    assert float(school_total[0]["value"][1]) >= threshold + 20
    # The alert's own expression, as written in moodle.yml, selects the mailer and nobody else of the school.
    matched = promql(prom, alert_expr("MoodleMassMailingByUser"))
    ours = [m["metric"] for m in matched if m["metric"].get("school") == world.school.code]
    assert [m["username"] for m in ours] == [world.mailer], matched
    # Prometheus evaluates the rule: pending, then firing once `for:` has run (5 s here;
    # scrape and evaluation every second, so within a few seconds more).
    deadline = seen + 45
    alert = _alert(prom, "MoodleMassMailingByUser", world.mailer)
    while (alert is None or alert["state"] != "firing") and time.monotonic() < deadline:
        time.sleep(0.5)
        alert = _alert(prom, "MoodleMassMailingByUser", world.mailer)
    assert alert is not None and alert["state"] == "firing", alert
    print(f"MoodleMassMailingByUser firing {time.monotonic() - seen:.1f} s after the metric showed "
          f"(for: {MASS_MAILING_FOR})")
    assert f"--users {world.mailer}" in alert["annotations"]["runbook"]
    others = [u for u in (world.recipient, world.victim) if _alert(prom, "MoodleMassMailingByUser", u)]
    assert not others, f"the alert fires for {others} too"

    # Prometheus itself sends the firing alert to Alertmanager, where it scopes the
    # messaging runbook (dry run).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = requests.get(f"{module_alertmanager}/api/v2/alerts", timeout=5,
                            params={"filter": 'alertname="MoodleMassMailingByUser"'}).json()
        if any(a["labels"].get("username") == world.mailer for a in held):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the firing alert did not reach Alertmanager")
    out = subprocess.run([sys.executable, "-m", "moodleops.cli", "incident", "messaging", "suspend",
                          "--users-from-alert", "MoodleMassMailingByUser", "--alertmanager", module_alertmanager,
                          "--reason", "watch test", "--ticket", "T-WATCH", "--journal-copy", "-"],
                         capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert world.mailer in out.stdout and world.recipient not in out.stdout, out.stdout
    assert "dry run" in (out.stdout + out.stderr).lower(), out.stdout


def test_a_new_site_admin_and_a_new_manager_show(world: WatchWorld, moodle: MoodleCLI,
                                                exporter: tuple[WatchExporter, str]) -> None:
    ex, _ = exporter
    assert ex.read_once()
    before = ex.state().result
    assert before is not None and world.recipient not in before.new_site_admins
    managers = before.new_roles.get(("manager", "platform"), 0)
    try:
        moodle.tool(str(FIXTURE), timeout=120, payload={"action": "admin", "username": world.recipient, "add": True})
        moodle.tool(str(FIXTURE), timeout=120, payload={"action": "manager", "username": world.victim, "add": True})
        assert ex.read_once()
        after = ex.state().result
        assert after is not None
        assert world.recipient in after.new_site_admins, (after.new_site_admins, after.site_admins, before.site_admins)
        assert after.site_admins == before.site_admins + 1, (after.site_admins, before.site_admins)
        assert after.new_roles[("manager", "platform")] == managers + 1
        assert f'moodle_new_site_admin{{username="{world.recipient}"}} 1.0' in ex.exposition().decode()
    finally:
        moodle.tool(str(FIXTURE), timeout=120, payload={"action": "admin", "username": world.recipient, "add": False})
        moodle.tool(str(FIXTURE), timeout=120, payload={"action": "manager", "username": world.victim, "add": False})
    assert ex.read_once()
    assert world.recipient not in ex.state().result.new_site_admins   # type: ignore[union-attr]


def _failed_login(session: requests.Session, base: str, username: str) -> None:
    page = session.get(f"{base}/login/index.php", timeout=30)
    token = re.search(r'name="logintoken" value="([^"]+)"', page.text)
    data = {"username": username, "password": "not-the-password"}
    if token:
        data["logintoken"] = token.group(1)
    resp = session.post(f"{base}/login/index.php", data=data, timeout=30, allow_redirects=False)
    assert resp.status_code in (200, 303), resp.status_code


def test_failed_logins_over_http_raise_the_schools_series(world: WatchWorld, site: Site, prom: str) -> None:
    assert site.wwwroot.startswith(("http://127.", "http://localhost", "http://[::1]"))
    series = f'moodle_failed_logins_10m{{school="{world.school.code}",source="loopback"}}'
    before = promql(prom, series)
    base_value = float(before[0]["value"][1]) if before else 0.0
    with requests.Session() as s:
        for _ in range(6):
            _failed_login(s, site.wwwroot, world.victim)
        _failed_login(s, site.wwwroot, f"nobody{uuid.uuid4().hex[:8]}")
    got = wait_for(prom, f"{series} >= {base_value + 6}", 30)
    assert got, f"{series} did not rise by 6 (was {base_value})"
    assert float(got[0]["value"][1]) == base_value + 6, "the unknown username was counted on the school"
    assert wait_for(prom, 'moodle_failed_logins_10m{school="unknown",source="loopback"} >= 1', 10)


def test_a_stopped_cron_shows_as_lag(exporter: tuple[WatchExporter, str], prom: str,
                                     local_inventory: Inventory) -> None:
    ex, _ = exporter
    interval = int(role_vars(local_inventory, "moodle_cron", "web", ("moodle_cron_interval",))["moodle_cron_interval"])
    status = subprocess.run(["supervisorctl", "status", "moodle-cron"], capture_output=True, text=True, check=False)
    assert "RUNNING" in status.stdout, f"the stack's cron is not running: {status.stdout.strip()}"
    # The stack is shared: stop the supervised cron briefly, always start it again.
    subprocess.run(["supervisorctl", "stop", "moodle-cron"], capture_output=True, check=True, timeout=60)
    try:
        stopped = time.time()
        assert ex.read_once()
        last = ex.state().result.cron_last_start   # type: ignore[union-attr]
        assert last is not None
        time.sleep(interval + 15 - (time.time() - stopped))
        assert ex.read_once()
        assert ex.state().result.cron_last_start == last, "cron started while stopped"   # type: ignore[union-attr]
        lag = wait_for(prom, f"moodle_cron_lag_seconds > {interval + 10}", 10)
        assert lag, "the stopped cron's lag does not show in Prometheus"
        assert float(lag[0]["value"][1]) >= time.time() - stopped - 5
    finally:
        subprocess.run(["supervisorctl", "start", "moodle-cron"], capture_output=True, check=False, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ex.read_once()
        if (ex.state().result.cron_last_start or 0) > last:   # type: ignore[union-attr]
            break
        time.sleep(2)
    assert (ex.state().result.cron_last_start or 0) > last, "cron did not run again after its restart"   # type: ignore[union-attr]


def test_a_scrape_stays_under_50ms_while_reads_run(cfg: WatchConfig, local_inventory: Inventory) -> None:
    """A functional bound, not a benchmark (bench/watch_scrape.py has the percentiles): with
    reads of Moodle's tables running back to back (production: one a minute), EVERY scrape
    over HTTP by another process (curl, as Prometheus is) answers within 50 ms, and most of
    them overlap a read in progress."""
    ex = WatchExporter(cfg, thresholds(local_inventory), interval_s=3600)
    assert ex.read_once()
    server, _ = ex.serve("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"   # type: ignore[attr-defined]
    stop = threading.Event()
    reads: list[tuple[float, float]] = []          # successful reads' (start, end), time.monotonic()
    failed: list[str] = []

    def reading() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            if ex.read_once():
                reads.append((t0, time.monotonic()))
            else:
                failed.append(ex.state().last_error)

    reader = threading.Thread(target=reading, daemon=True)
    reader.start()
    scrapes: list[tuple[float, float, float]] = []   # curl's (start, end) and the GET's time_total
    body = b""
    try:
        while len(scrapes) < 200:
            t0 = time.monotonic()
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.split()
            assert out[0] == "200", out
            scrapes.append((t0, time.monotonic(), float(out[1])))
        body = requests.get(url, timeout=5).content
    finally:
        stop.set()
        reader.join(60)
        server.shutdown()   # type: ignore[attr-defined]
        ex.stop()
    assert b"moodle_cron_lag_seconds" in body
    assert not failed, failed
    overlapping = sum(1 for t0, t1, _ in scrapes if any(r0 < t1 and t0 < r1 for r0, r1 in reads))
    worst = max(took for _, _, took in scrapes)
    print(f"{len(scrapes)} scrapes, {overlapping} during a read ({len(reads)} reads, median "
          f"{sorted(r1 - r0 for r0, r1 in reads)[len(reads) // 2] * 1000:.0f} ms); slowest scrape "
          f"{worst * 1000:.1f} ms")
    assert len(reads) >= 5 and overlapping >= 100, (len(reads), overlapping)
    slow = sorted(round(took * 1000, 1) for _, _, took in scrapes if took >= 0.050)
    assert not slow, (f"{len(slow)} of {len(scrapes)} scrapes took 50 ms or more: {slow} ms; the same "
                      f"server with no read running, just after: {_idle_scrapes(cfg, local_inventory)}")


def _idle_scrapes(cfg: WatchConfig, inv: Inventory) -> str:
    """For the failure message only: the slowest of 100 scrapes with no read at all, so that
    whoever reads it sees whether the exporter or the machine (other jobs) is slow."""
    ex = WatchExporter(cfg, thresholds(inv), interval_s=3600)
    try:
        assert ex.read_once()
        server, _ = ex.serve("127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.server_port}/metrics"   # type: ignore[attr-defined]
        took = [float(subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", url],
                                     capture_output=True, text=True, timeout=10, check=True).stdout)
                for _ in range(100)]
        server.shutdown()   # type: ignore[attr-defined]
    finally:
        ex.stop()
    return f"slowest {max(took) * 1000:.1f} ms, {sum(t >= 0.050 for t in took)} of 100 at 50 ms or more"


def test_every_dashboard_query_parses_and_returns_series_in_the_stack_prometheus(
        local_inventory: Inventory, provisioned: object, world: WatchWorld, moodle: MoodleCLI) -> None:
    # A sender within the hour, so that the top-senders panel has someone to show.
    moodle.tool(str(FIXTURE), timeout=300, payload={"action": "send", "from": world.recipient,
                                                    "to": world.mailer, "count": 3})
    s = monitoring_settings(local_inventory)
    base = f"http://{s['monitoring_listen_address']}:{int(s['monitoring_prometheus_port'])}"
    assert wait_for(base, 'up{job="moodle_watch"} == 1', 120), "the stack's Prometheus does not scrape moodle_watch"
    assert wait_for(base, 'up{job="moodle_storage"} == 1', 60)
    deadline = time.monotonic() + 180
    empty: list[str] = []
    for name in dashboard.DASHBOARDS:
        for panel in dashboard.to_json(name)["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                while True:
                    result = promql(base, expr)      # asserts it parses (status success)
                    if result or time.monotonic() > deadline:
                        break
                    time.sleep(3)
                if not result:
                    empty.append(f"{name} / {panel['title']}: {expr}")
    assert not empty, "queries returning no series:\n" + "\n".join(empty)
