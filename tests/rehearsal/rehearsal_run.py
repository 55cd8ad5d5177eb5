"""What the rehearsal's test modules share: the rehearsal brought up for a module
and always brought down, commands run on a host over SSH, and lb1's
certificate to trust."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from moodleops import REPO_ROOT
from moodleops.inventory import load_inventory
from moodleops.platform.ansible import PlaybookResult
from moodleops.rehearsal import lxc, ssh
from moodleops.rehearsal.spec import load_rehearsal
from moodleops.webclient import MoodleSession, login

INV = load_inventory("rehearsal")
SPEC = load_rehearsal(INV)
WWWROOT = f"https://{SPEC.host('lb1').address}"
# site.yml onto every host (gen1, gen2: base and node-exporter only; gen1 is a
# host the database must refuse). mon1 mounts moodledata and runs the monitoring.
PLATFORM_PLAY: list[str] = []


@dataclass(frozen=True)
class Platform:
    """The platform brought up on the rehearsal (conftest.py's `platform`: the
    first run by `platform up`, whose success the fixture asserts)."""
    second: PlaybookResult
    ca: Path            # lb1's certificate, the only one to trust
    up: str             # what `moodleops -i rehearsal platform up` printed
    start: dict[str, str]   # its environment: the older start point (MOODLEOPS_PINS, MOODLEOPS_ARTIFACTS) or none


def moodleops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moodleops.cli", *args], capture_output=True, text=True,
                          timeout=1800, cwd=REPO_ROOT, check=False, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def on(host: str, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(ssh.ssh_argv(SPEC, SPEC.host(host), command), input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def secret(name: str) -> str:
    """A secret `rehearsal up` generated (db_password, db_ro_password, admin_password, ...)."""
    return (SPEC.state_dir / "secrets" / name).read_text(encoding="utf-8").strip()


def psql(host: str, sql: str, *, user: str, password: str, db_host: str, options: str = "-tA"
         ) -> subprocess.CompletedProcess[str]:
    """`psql -c sql` on `host` as `user`; the password (a secret's name) goes over stdin, never
    into an argument."""
    db = INV.settings
    return on(host, f"read -r PGPASSWORD; export PGPASSWORD; psql -h {db_host} -p {db.db_port} -U {user} "
                    f"-d {db.db_name} {options} -c {shlex.quote(sql)}", secret(password) + "\n")


@contextmanager
def rehearsal_up() -> Iterator[None]:
    """The rehearsal's hosts for the body; `down` afterwards whatever happened."""
    if lxc.missing_tools():
        pytest.fail("lxc is not installed: ./ops test installs it (apt-get install lxc debootstrap)")
    up = moodleops("rehearsal", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield
    finally:
        moodleops("rehearsal", "down")


def lb1_certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lb1's self-signed certificate, read from lb1 over SSH: the only one to trust."""
    ca = tmp_path_factory.mktemp("tls") / "lb1.crt"
    ca.write_text(on("lb1", "cat /etc/ssl/moodleops/moodle.crt").stdout, encoding="utf-8")
    return ca


def admin_session(ca: Path) -> MoodleSession:
    """Moodle's admin logged in through lb1, trusting only lb1's certificate `ca`."""
    http = requests.Session()
    # Only lb1's certificate: no CA bundle from the environment may override it.
    http.trust_env = False
    http.verify = str(ca)
    return login(WWWROOT, "admin", secret("admin_password"), http=http)


_UPLOAD_REPO = re.compile(r'"id":"(\d+)","name":"[^"]*","type":"upload"')
_DRAFT_ITEM = re.compile(r'name="files_filemanager"[^>]*value="(\d+)"|value="(\d+)"[^>]*name="files_filemanager"')
_USER_CONTEXT = re.compile(r'"contextid":(\d+)')


def upload_private_file(session: MoodleSession, name: str, content: bytes) -> tuple[str, str]:
    """`content` uploaded as the file picker does (repository_ajax.php) into the
    session user's draft area: (its download URL, the node that took it). The
    file lands in moodledata (filedir) and in Moodle's files table."""
    page = session.get("/user/files.php")
    repo, item, ctx = _UPLOAD_REPO.search(page.text), _DRAFT_ITEM.search(page.text), _USER_CONTEXT.search(page.text)
    assert repo and item and ctx, f"no file manager on /user/files.php (served by {page.headers['X-Served-By']})"
    up = session.http.post(f"{WWWROOT}/repository/repository_ajax.php?action=upload", timeout=60, data={
        "sesskey": session.sesskey, "repo_id": repo.group(1), "itemid": item.group(1) or item.group(2),
        "ctx_id": ctx.group(1), "savepath": "/", "title": name, "author": "rehearsal",
        "license": "allrightsreserved"}, files={"repo_upload_file": (name, content, "text/plain")})
    answer = up.json()
    assert up.status_code == 200 and "url" in answer, answer
    return str(answer["url"]), up.headers["X-Served-By"]
