"""Each web node asked directly, past the load balancer: the part of `platform
status` that names a dead node. Through the load balancer a dead node is
invisible (it is taken out and the others answer); at 3 a.m. the operator
needs its name and what to look at."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import InsecureRequestWarning

from moodleops.inventory import Inventory
from moodleops.platform.ansible_view import role_vars
from moodleops.webclient import LOGIN_TOKEN

PAGE = "/login/index.php"


@dataclass(frozen=True)
class NodeAnswer:
    host: str
    url: str
    ok: bool
    detail: str          # "200 in 35 ms", or what failed and what to check


def node_urls(inv: Inventory) -> dict[str, str]:
    """Moodle's login page on each web node's own nginx, as the nginx role
    configured it (port, TLS)."""
    nginx = role_vars(inv, "nginx", "web", ("nginx_listen_port", "nginx_tls"))
    scheme = "https" if nginx["nginx_tls"] else "http"
    port = int(nginx["nginx_listen_port"])
    default = 443 if scheme == "https" else 80
    urls = {}
    for h in inv.group("web"):
        address = f"[{h.address}]" if ":" in h.address else h.address
        urls[h.name] = f"{scheme}://{address}{'' if port == default else f':{port}'}{PAGE}"
    return urls


def probe_node(name: str, url: str, wwwroot: str, timeout: float = 10.0) -> NodeAnswer:
    """One GET of the login page as the load balancer sends it (the site's
    Host); OK only when Moodle itself answered with its form, not merely nginx."""
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # The node's certificate names the site, not the node's address: this
            # asks whether Moodle answers there, the load balancer checks identity.
            warnings.simplefilter("ignore", InsecureRequestWarning)
            resp = requests.get(url, headers={"Host": urlsplit(wwwroot).netloc}, timeout=timeout,
                                verify=False, allow_redirects=False)
    except requests.ConnectionError as exc:
        refused = "refused" in str(exc).lower()
        why = "connection refused" if refused else "unreachable"
        return NodeAnswer(name, url, False, f"{why} at {url}; check nginx on {name}"
                          + ("" if refused else " and that the host is up"))
    except requests.Timeout:
        return NodeAnswer(name, url, False, f"no answer within {timeout:g} s from {url}; check the load of "
                                            f"{name}, its php-fpm pool and the database")
    except requests.RequestException as exc:
        return NodeAnswer(name, url, False, f"{url}: {' '.join(str(exc).split())[:200]}")
    took = (time.monotonic() - started) * 1000
    if resp.status_code == 200 and LOGIN_TOKEN.search(resp.text):
        return NodeAnswer(name, url, True, f"{resp.status_code} in {took:.0f} ms")
    if resp.status_code in (502, 504):
        return NodeAnswer(name, url, False, f"HTTP {resp.status_code} from nginx at {url}; check php-fpm on {name}")
    if resp.status_code == 503:
        return NodeAnswer(name, url, False, f"HTTP 503 at {url}: maintenance, or Moodle cannot reach its database")
    return NodeAnswer(name, url, False, f"HTTP {resp.status_code} at {url}, not Moodle's login page; check "
                                        f"the nginx vhost and Moodle's config.php on {name}")


def probe_web_nodes(inv: Inventory, wwwroot: str, timeout: float = 10.0) -> list[NodeAnswer]:
    return [probe_node(name, url, wwwroot, timeout) for name, url in node_urls(inv).items()]
