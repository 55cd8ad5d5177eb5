"""`platform status`'s direct look at each web node (moodleops/platform/nodes.py),
against real HTTP servers on loopback standing in for nodes in each state an
operator meets: Moodle answering, php-fpm gone (nginx's 502), nginx gone
(refused), a node too loaded to answer, a page that is not Moodle's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moodleops.inventory import load_inventory
from moodleops.platform.nodes import node_urls, probe_node
from tests.prom_loopback import free_port

WWWROOT = "https://moodle.example.invalid"


class Node(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))  # type: ignore[attr-defined]
        kind = self.server.kind  # type: ignore[attr-defined]
        if kind == "slow":
            time.sleep(2)
        status, body = {"moodle": (200, '<form><input name="logintoken" value="x"></form>'),
                        "nofpm": (502, "<h1>502 Bad Gateway</h1>"),
                        "slow": (200, ""),
                        "other": (200, "<h1>Welcome to nginx!</h1>")}[kind]
        data = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass    # the slow node's caller has given up: that is the point

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def start(kind: str) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
        server.daemon_threads = True
        server.kind = kind  # type: ignore[attr-defined]
        server.hosts = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/login/index.php"

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_node_where_moodle_answers_is_ok_and_asked_for_the_site(node) -> None:  # type: ignore[no-untyped-def]
    answer = probe_node("web1", node("moodle"), WWWROOT)
    assert answer.ok and answer.detail.startswith("200 in "), answer
    assert node.servers[0].hosts == ["moodle.example.invalid"]


@pytest.mark.parametrize(("kind", "says"), [
    ("nofpm", "HTTP 502 from nginx at {url}; check php-fpm on web2"),
    ("other", "HTTP 200 at {url}, not Moodle's login page; check the nginx vhost and Moodle's config.php on web2"),
])
def test_a_node_that_answers_without_moodle_is_down(node, kind: str, says: str) -> None:  # type: ignore[no-untyped-def]
    url = node(kind)
    answer = probe_node("web2", url, WWWROOT)
    assert not answer.ok and answer.detail == says.format(url=url), answer


def test_a_node_with_nginx_stopped_is_named_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/login/index.php"
    answer = probe_node("web2", url, WWWROOT)
    assert not answer.ok and answer.detail == f"connection refused at {url}; check nginx on web2", answer


def test_a_node_too_slow_is_down_with_what_to_check(node) -> None:  # type: ignore[no-untyped-def]
    url = node("slow")
    answer = probe_node("web2", url, WWWROOT, timeout=0.5)
    assert not answer.ok and answer.detail == (f"no answer within 0.5 s from {url}; check the load of web2, "
                                               "its php-fpm pool and the database"), answer


def test_node_urls_follow_the_nginx_role() -> None:
    # Computed by Ansible from the inventories (nothing is contacted).
    assert node_urls(load_inventory("rehearsal")) == {
        "web1": "https://10.0.3.211/login/index.php", "web2": "https://10.0.3.212/login/index.php"}
    local = load_inventory("local")
    assert node_urls(local) == {h.name: "http://127.0.0.1:8080/login/index.php" for h in local.group("web")}
