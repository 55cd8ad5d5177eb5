"""lb1's haproxy in front of both web nodes, over TLS end to end, on the
provisioned platform (conftest.py's `platform`): requests are shared between
web1 and web2, the answering node is named in a header, plain HTTP is sent to
HTTPS, the web nodes themselves speak TLS, and a node that fails its health
check (Moodle's /login/index.php behind web_health_path, as in production) is
taken out within the check window and comes back, while nodes in Moodle's
maintenance stay and show its page."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import requests

from .rehearsal_run import INV, SPEC, Platform, moodleops, on

LB = SPEC.host("lb1")
WEB2 = SPEC.host("web2")
PAGE = "/login/index.php"


def _answers(ca: Path, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        resp = requests.get(f"https://{LB.address}{PAGE}", verify=str(ca), timeout=10)
        ok = resp.status_code == 200 and 'name="logintoken"' in resp.text
        seen[f"{resp.status_code if ok else 'bad ' + str(resp.status_code)} {resp.headers.get('X-Served-By')}"] += 1
    return seen


def _wait(ca: Path, wanted: set[str], within: float) -> Counter[str]:
    deadline = time.monotonic() + within
    while True:
        seen = _answers(ca, 6)
        if set(seen) == wanted or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_both_nodes_answer_and_are_named(platform: Platform) -> None:
    seen = _wait(platform.ca, {"200 web1", "200 web2"}, within=15)
    assert set(seen) == {"200 web1", "200 web2"}, seen
    # Round robin: each node takes its share.
    assert min(seen.values()) >= 2, seen


def test_plain_http_redirects_to_https(platform: Platform) -> None:
    resp = requests.get(f"http://{LB.address}{PAGE}", allow_redirects=False, timeout=5)
    assert resp.status_code == 302 and resp.headers["Location"] == f"https://{LB.address}{PAGE}"


def test_web_nodes_speak_tls(platform: Platform) -> None:
    for node in ("web1", "web2"):
        host = SPEC.host(node)
        # Asked for the site's name (lb1's), as through haproxy: the node answers Moodle's page over TLS.
        proc = on("lb1", f"curl -sk -w '\\n%{{http_code}}' -H 'Host: {LB.address}' https://{host.address}{PAGE}")
        body, _, code = proc.stdout.rpartition("\n")
        assert code == "200" and 'name="logintoken"' in body, (node, code, proc.stderr)
        plain = on("lb1", f"curl -s -o /dev/null -w '%{{http_code}}' http://{host.address}:443{PAGE}")
        assert plain.stdout.strip() == "400", plain.stdout    # nginx: plain HTTP sent to an HTTPS port


def test_a_failing_node_is_taken_out_and_back(platform: Platform) -> None:
    ca = platform.ca
    assert on("web2", "sudo service nginx stop").returncode == 0
    try:
        seen = _wait(ca, {"200 web1"}, within=20)
        assert set(seen) == {"200 web1"}, seen
        # Through lb1 nothing shows; `platform status`, run on the operator's side, names the dead node.
        down = _status(ca)
        assert down.returncode == 1, down.stdout + down.stderr
        assert re.search(r"Node +web1 +OK +200 in \d+ ms", down.stdout), down.stdout
        assert (f"PROBLEM  web node web2 is down: connection refused at https://{WEB2.address}{PAGE}; "
                "check nginx on web2") in down.stdout, down.stdout
    finally:
        assert on("web2", "sudo service nginx start").returncode == 0
    seen = _wait(ca, {"200 web1", "200 web2"}, within=20)
    assert set(seen) == {"200 web1", "200 web2"}, seen
    up = _status(ca)
    assert up.returncode == 0 and re.search(r"Node +web2 +OK", up.stdout), up.stdout + up.stderr
    # Not a web node of the rehearsal: its versions are read on web1 over SSH (the toolkit's
    # `platform probe` there), never from this machine's Moodle CLI.
    assert "Moodle   read on web1 over SSH (this machine is not a web node of 'rehearsal')" in up.stdout, up.stdout
    assert re.search(rf"Moodle   \S+ .*\(version \S+; pinned {re.escape(INV.core.version_text)}\)  OK", up.stdout), up.stdout
    assert f"Plugins  {len(INV.plugins)}/{len(INV.plugins)} at their pinned version" in up.stdout, up.stdout
    assert "login as admin OK" in up.stdout, up.stdout


def test_in_maintenance_both_nodes_stay_and_show_moodles_page(platform: Platform) -> None:
    """Moodle in CLI maintenance answers 503 everywhere; lb1 must keep the nodes
    (users see Moodle's maintenance page, not haproxy's "no server") and take
    them back into normal service as soon as it ends."""
    cli = "sudo -u www-data php /srv/moodle/current/admin/cli/maintenance.php"
    assert on("web1", f"{cli} --enable").returncode == 0
    try:
        time.sleep(6)       # more than the health check's fall window (2 x 2 s)
        seen: Counter[str] = Counter()
        for _ in range(8):
            resp = requests.get(f"https://{LB.address}{PAGE}", verify=str(platform.ca), timeout=10)
            moodles = resp.status_code == 503 and resp.headers.get("Retry-After") == "300"
            seen[f"{'maintenance' if moodles else resp.status_code} {resp.headers.get('X-Served-By')}"] += 1
        assert set(seen) == {"maintenance web1", "maintenance web2"}, seen
    finally:
        assert on("web1", f"{cli} --disable").returncode == 0
    seen = _wait(platform.ca, {"200 web1", "200 web2"}, within=10)
    assert set(seen) == {"200 web1", "200 web2"}, seen


def _status(ca: Path) -> subprocess.CompletedProcess[str]:
    # No REQUESTS_CA_BUNDLE: the login trusts the inventory's moodle_ca_bundle, lb1's certificate.
    assert INV.settings.ca_bundle is not None and INV.settings.ca_bundle.read_bytes() == ca.read_bytes()
    return moodleops("-i", "rehearsal", "platform", "status")
