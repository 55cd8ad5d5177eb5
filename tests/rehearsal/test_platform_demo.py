"""Demonstration 1 of #13: the platform brought up by `moodleops -i rehearsal
platform up` (site.yml onto the rehearsal's separate hosts over SSH, then the
health summary; conftest.py's `platform`: every host of the rehearsal, mon1
with its monitoring), the summary naming both web nodes and an admin login
through lb1 that trusts only lb1's certificate (fetched by the haproxy role
into moodle_ca_bundle), Moodle answering
through lb1 from both web nodes (named in X-Served-By), an admin session
started on one node continuing on the other, a file uploaded through one node
downloading through the other, cron running on exactly one node, a second run
changing nothing on any host, and --check --diff printing no secret
(docs/rehearsal.md).
"""

from __future__ import annotations

import time
import uuid

import requests

from moodleops.platform.ansible import run_playbook

from .rehearsal_run import (
    INV,
    PLATFORM_PLAY,
    WWWROOT,
    Platform,
    admin_session,
    on,
    secret,
    upload_private_file,
)


def test_platform_up_shows_the_platform_working(platform: Platform) -> None:
    lines = platform.up.splitlines()
    for node in ("web1", "web2"):
        assert any(line.split()[:3] == ["Node", node, "OK"] for line in lines), platform.up[-3000:]
    assert any("HTTP     login as admin OK (session alive: True)" in line for line in lines), platform.up[-3000:]
    # The versions, from web1's own Moodle (the toolkit's `platform probe` there, over SSH).
    assert "  Moodle   read on web1 over SSH (this machine is not a web node of 'rehearsal')" in lines
    assert f"  Plugins  {len(INV.plugins)}/{len(INV.plugins)} at their pinned version" in lines
    # mon1's daemons listen on its loopback: asked there over SSH (its toolkit's `platform monitoring-probe`).
    assert "  Monitor  read on mon1 over SSH (its daemons listen on its loopback)" in lines, platform.up[-3000:]
    assert any(line.startswith("  Prometheus http://127.0.0.1:") and "job moodle_storage" in line
               for line in lines), platform.up[-3000:]
    assert lines[-1].strip() == "Verdict  OK", platform.up[-3000:]
    # What it trusted is what lb1 serves (read over SSH), and nothing else.
    assert INV.settings.ca_bundle is not None
    assert INV.settings.ca_bundle.read_text(encoding="utf-8") == platform.ca.read_text(encoding="utf-8")


def test_second_run_changes_nothing(platform: Platform) -> None:
    second = platform.second
    assert second.ok, "\n".join(second.output[-80:])
    assert second.changed == dict.fromkeys(second.changed, 0), second.changed
    assert set(second.changed) == {"lb1", "web1", "web2", "db1", "db2", "data1", "mon1", "gen1", "gen2"}, second.changed


def test_moodle_answers_through_lb1_from_both_nodes(platform: Platform) -> None:
    ca = platform.ca
    served = set()
    for _ in range(8):
        resp = requests.get(f"{WWWROOT}/login/index.php", verify=str(ca), timeout=30)
        assert resp.status_code == 200 and 'name="logintoken"' in resp.text, resp.status_code
        served.add(resp.headers["X-Served-By"])
    assert served == {"web1", "web2"}


def test_admin_session_continues_across_nodes(platform: Platform) -> None:
    ca = platform.ca
    session = admin_session(ca)
    nodes = set()
    for _ in range(6):
        resp = session.get("/my/", allow_redirects=True)
        assert "/login/index.php" not in resp.url and f'"sesskey":"{session.sesskey}"' in resp.text
        nodes.add(resp.headers["X-Served-By"])
    # One session, seen alive by both nodes (sessions are in the database).
    assert nodes == {"web1", "web2"}


def test_cron_runs_on_exactly_one_node(platform: Platform) -> None:
    timers = {node: on(node, "sudo systemctl is-enabled moodle-cron.timer").stdout.strip() for node in ("web1", "web2")}
    assert timers["web1"] == "enabled" and timers["web2"] != "enabled", timers
    assert on("web2", "sudo systemctl cat moodle-cron.service").returncode != 0, "web2 has a cron unit"
    # And it really runs: Moodle records each cron start (read through Moodle, from web2).
    started = "0"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        started = on("web2", "sudo -u www-data php /srv/moodle/current/admin/cli/cfg.php "
                             "--component=tool_task --name=lastcronstart").stdout.strip() or "0"
        if started.isdigit() and int(started) > time.time() - 300:
            break
        time.sleep(10)
    assert started.isdigit() and int(started) > time.time() - 300, f"no cron run recorded (lastcronstart={started!r})"
    ran = on("web1", "sudo systemctl show -p ExecMainStartTimestampMonotonic --value moodle-cron.service").stdout.strip()
    assert ran not in ("", "0"), "moodle-cron.service never started on web1"


def test_each_node_has_its_own_release_and_current(platform: Platform) -> None:
    targets = {node: on(node, "readlink /srv/moodle/current").stdout.strip() for node in ("web1", "web2")}
    assert targets["web1"] == targets["web2"] and targets["web1"].startswith("/srv/moodle/releases/"), targets
    for node in ("web1", "web2"):
        assert on(node, f"test -f {targets[node]}/version.php").returncode == 0, node


def test_file_uploaded_through_one_node_downloads_through_the_other(
        platform: Platform) -> None:
    session = admin_session(platform.ca)
    content = f"rehearsal {uuid.uuid4()}\n".encode()
    url, uploaded_on = upload_private_file(session, "demo.txt", content)
    # Round robin: within a few requests through lb1 the other node answers.
    for _ in range(6):
        down = session.http.get(url, timeout=60)
        if down.headers["X-Served-By"] != uploaded_on:
            break
    assert down.headers["X-Served-By"] != uploaded_on, "lb1 never sent the download to the other node"
    assert down.status_code == 200 and down.content == content, (down.status_code, down.content[:200])


def test_check_diff_prints_no_secret(platform: Platform) -> None:
    # config.php drifted on web2: check mode must show the change without its content (the DB password).
    # Only web2 is checked: on the other hosts nothing drifted, so check mode would print no diff there
    # (the second run shows they are converged), at two thirds of CI's time for this test.
    path = on("web2", "readlink -f /srv/moodle/current/config.php").stdout.strip()
    assert on("web2", f"sudo cp -p {path} {path}.keep && echo '// drift' | sudo tee -a {path}").returncode == 0
    try:
        check = run_playbook(INV, "site.yml", [*PLATFORM_PLAY, "--check", "--diff", "--limit", "web2"], echo=False)
    finally:
        on("web2", f"sudo mv {path}.keep {path}")
    assert check.ok, "\n".join(check.output[-80:])
    assert set(check.changed) == {"web2"} and check.changed["web2"] >= 1, check.changed
    text = "\n".join(check.output)
    leaked = [name for name in ("admin_password", "db_password", "db_ro_password", "db_replication_password") if secret(name) in text]
    assert not leaked, f"--check --diff printed {leaked}"
