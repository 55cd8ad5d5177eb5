"""lb1's haproxy in front of both web nodes, over TLS end to end: requests are
shared between web1 and web2, the answering node is named in a header, and a
node that fails its health check is taken out within the check window.

Moodle itself is not installed here (that is the platform test): the health
check is pointed at a static page that this test puts in each node's code
directory, so what is checked is the load balancer, TLS and the nginx vhost."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rehearsal_run import INV, SPEC, lb1_certificate, on, play, rehearsal_up

from moodleops.platform.ansible import PlaybookResult, run_playbook

LB = SPEC.host("lb1")
PLAY = ["--limit", "lb1,web1,web2", "--tags", "base,php,nginx,haproxy", "-e", "haproxy_health_path=/health.txt"]


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlaybookResult, Path]]:
    with rehearsal_up():
        play(PLAY)
        for node in ("web1", "web2"):
            placed = on(node, "sudo install -d /srv/moodle/current && hostname | sudo tee "
                              "/srv/moodle/current/health.txt")
            assert placed.returncode == 0, placed.stderr
        ca = lb1_certificate(tmp_path_factory)
        yield run_playbook(INV, "site.yml", PLAY, echo=False), ca


def _answers(ca: Path, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        resp = requests.get(f"https://{LB.address}/health.txt", verify=str(ca), timeout=5)
        seen[f"{resp.status_code} {resp.headers.get('X-Served-By')} {resp.text.strip()}"] += 1
    return seen


def _wait(ca: Path, wanted: set[str], within: float) -> Counter[str]:
    deadline = time.monotonic() + within
    while True:
        seen = _answers(ca, 6)
        if set(seen) == wanted or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_second_run_changes_nothing(lb: tuple[PlaybookResult, Path]) -> None:
    second, _ = lb
    assert second.ok and second.changed == {"lb1": 0, "web1": 0, "web2": 0}, second.changed


def test_both_nodes_answer_and_are_named(lb: tuple[PlaybookResult, Path]) -> None:
    _, ca = lb
    seen = _wait(ca, {"200 web1 web1", "200 web2 web2"}, within=15)
    assert set(seen) == {"200 web1 web1", "200 web2 web2"}, seen
    # Round robin: each node takes its share.
    assert min(seen.values()) >= 2, seen


def test_plain_http_redirects_to_https(lb: tuple[PlaybookResult, Path]) -> None:
    resp = requests.get(f"http://{LB.address}/health.txt", allow_redirects=False, timeout=5)
    assert resp.status_code == 302 and resp.headers["Location"] == f"https://{LB.address}/health.txt"


def test_web_nodes_speak_tls(lb: tuple[PlaybookResult, Path]) -> None:
    for node in ("web1", "web2"):
        host = SPEC.host(node)
        proc = on("lb1", f"curl -sk https://{host.address}/health.txt")
        assert proc.stdout.strip() == node, (node, proc.stdout, proc.stderr)
        plain = on("lb1", f"curl -s -o /dev/null -w '%{{http_code}}' http://{host.address}:443/health.txt")
        assert plain.stdout.strip() == "400", plain.stdout    # nginx: plain HTTP sent to an HTTPS port


def test_a_failing_node_is_taken_out_and_back(lb: tuple[PlaybookResult, Path]) -> None:
    _, ca = lb
    assert on("web2", "sudo service nginx stop").returncode == 0
    try:
        seen = _wait(ca, {"200 web1 web1"}, within=15)
        assert set(seen) == {"200 web1 web1"}, seen
    finally:
        assert on("web2", "sudo service nginx start").returncode == 0
    seen = _wait(ca, {"200 web1 web1", "200 web2 web2"}, within=15)
    assert set(seen) == {"200 web1 web1", "200 web2 web2"}, seen
