"""A person's view of Moodle over HTTP: log in with the login token, as the
browser does, and read what the page shows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import requests

LOGIN_TOKEN = re.compile(r'name="logintoken"\s+value="([^"]+)"')
SESSKEY = re.compile(r'"sesskey":"([^"]+)"')
USERID = re.compile(r'"userid":\s*"?(\d+)')


class LoginFailed(RuntimeError):
    pass


def trusting(ca_bundle: Path | None) -> requests.Session:
    """A session that trusts `ca_bundle` alone when given (moodle_ca_bundle:
    the rehearsal's self-signed certificate), else the system's CAs."""
    http = requests.Session()
    if ca_bundle is not None:
        http.verify = str(ca_bundle)
        # Else REQUESTS_CA_BUNDLE in the environment would win over it (requests' merge order).
        http.trust_env = False
    return http


@dataclass
class MoodleSession:
    wwwroot: str
    http: requests.Session
    sesskey: str

    def get(self, path: str, **kw: object) -> requests.Response:
        return self.http.get(self.wwwroot + path, timeout=60, **kw)  # type: ignore[arg-type]

    def is_logged_in(self) -> bool:
        """True while the session is alive (a killed session lands on the login page)."""
        resp = self.get("/my/", allow_redirects=True)
        return "/login/index.php" not in resp.url and f'"sesskey":"{self.sesskey}"' in resp.text


def login(wwwroot: str, username: str, password: str, *, http: requests.Session | None = None) -> MoodleSession:
    """Log in through /login/index.php; raise LoginFailed with Moodle's reason."""
    http = http or requests.Session()
    wwwroot = wwwroot.rstrip("/")
    page = http.get(f"{wwwroot}/login/index.php", timeout=60)
    page.raise_for_status()
    token = LOGIN_TOKEN.search(page.text)
    if not token:
        raise LoginFailed(f"no login token on {page.url} (HTTP {page.status_code})")
    resp = http.post(f"{wwwroot}/login/index.php", timeout=60, allow_redirects=True,
                     data={"username": username, "password": password, "logintoken": token.group(1)})
    sesskey = SESSKEY.search(resp.text)
    logged_in = "/login/index.php" not in resp.url.split("?")[0] or "testsession=" in resp.url
    if resp.status_code != 200 or not sesskey or not logged_in or "logout.php" not in resp.text:
        reason = re.search(r'id="loginerrormessage"[^>]*>([^<]+)<', resp.text) or \
            re.search(r'class="alert alert-danger"[^>]*>([^<]+)<', resp.text)
        raise LoginFailed(f"login as {username!r} failed: "
                          f"{reason.group(1).strip() if reason else f'HTTP {resp.status_code} at {resp.url}'}")
    return MoodleSession(wwwroot=wwwroot, http=http, sesskey=sesskey.group(1))
