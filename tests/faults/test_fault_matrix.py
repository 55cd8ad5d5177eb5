"""The fault matrix: every `moodleops` command that talks to a dependency, run
with that dependency made unavailable for real, isolated from the shared stack
(a port bound then closed, a role created without its grant, a wrong password,
a moto server with no bucket or with authentication on, an HTTP server on
loopback answering 5xx / the maintenance page / S3 throttling, a 1 MB tmpfs
filled up, a read-only mount, a directory the running user cannot write, a PHP
binary that does not exist, a config.php that fails or prints garbage).

Each row checks: the exit status from the table (moodleops.errors), exactly one
`moodleops:` line on stderr naming the dependency and its address, no
traceback, and nothing changed (or the partial state said and resumable).

A new command gets its rows by adding them to MATRIX; a new fault by adding a
builder to FAULTS. README.md records the size of the matrix.

Rows that need the Moodle stack are `stack` rows (run under the stack lock);
the others (SSH to an sshd of this module's own on loopback, Alertmanager and
Prometheus on closed ports, a loopback page with Moodle's login form where a
command only checks that Moodle answers) run without it."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from loopback_sshd import Sshd, keygen
from prom_loopback import free_port

from moodleops import REPO_ROOT
from moodleops.errors import ExitStatus

TAG = "f" + uuid.uuid4().hex[:8]
BUCKET = "moodleops-fault-matrix"
PYTHON = sys.executable


# -- servers the faults need ------------------------------------------------------------

class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's (status, body); with `forward`,
    requests whose method is not in `fail_methods` (or whose path does not match
    `fail_path`) go to that base URL instead."""

    def _handle(self) -> None:
        srv: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        failing = self.command in srv.fail_methods and re.search(srv.fail_path, self.path)
        if srv.forward and not failing:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            resp = requests.request(self.command, srv.forward + self.path, data=body, headers=headers,
                                    timeout=30)
            self.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.content)))
            self.end_headers()
            self.wfile.write(resp.content)
            return
        status, payload = srv.answer
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if payload.startswith(b"<!") else "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    url: str
    stop: Callable[[], None]


def answering(status: int, body: bytes, *, forward: str = "", fail_methods: tuple[str, ...] = (),
              fail_path: str = "") -> Server:
    """With `forward`, only requests of `fail_methods` whose path matches `fail_path` get the answer."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    srv.answer, srv.forward, srv.fail_methods = (status, body), forward, fail_methods  # type: ignore[attr-defined]
    srv.fail_path = fail_path  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()
    return Server(f"http://127.0.0.1:{srv.server_address[1]}", stop)


MAINTENANCE_PAGE = (b"<!DOCTYPE html><html><head><title>Site under maintenance</title></head><body>"
                    b"<div id=\"maintenance_message\">This site is undergoing maintenance and is currently "
                    b"not available (climaintenance)</div></body></html>")
SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def moto(*, auth: bool = False) -> Server:
    port = free_port()
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"   # moto checks credentials: ours are unknown keys
    proc = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)
    return Server(url, stop)


def sshd(w: World) -> Sshd:
    if w.sshd is None:
        w.sshd = Sshd.start(w.root / "sshd")
        w.cleanups.append(w.sshd.stop)
    return w.sshd


# -- the world every row runs in ------------------------------------------------------------

@dataclass
class World:
    root: Path            # temporary directory of this test module (0755: the web user reads it)
    moto: str             # a healthy S3 API on loopback with the bucket
    school: str           # a school code of the inventory
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    pg_port: int = 0      # the throwaway PostgreSQL, once started
    sshd: Sshd | None = None   # this module's sshd on loopback, once started
    moodle_page: str = ""      # a loopback page with Moodle's login form, once started

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.moto, region_name="eu-west-3")

    def objects(self, name: str) -> list[str]:
        got = self.s3().list_objects_v2(Bucket=BUCKET, Prefix=f"{TAG}/{name}/")
        return [o["Key"] for o in got.get("Contents", [])]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="moodleops-faults-", dir="/tmp"))
    root.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "moodleops-test")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "moodleops-test")
    mp.delenv("AWS_PROFILE", raising=False)
    mp.delenv("MOODLEOPS_BACKUP_S3_ENDPOINT_URL", raising=False)
    # backup run seals the manifest's secrets: with a key, a row meets its fault, not a missing key.
    mp.setenv("MOODLEOPS_BACKUP_MANIFEST_KEY", Fernet.generate_key().decode())
    # The copies live under /tmp: the artifact mirror is found by the environment, not by a relative path.
    mp.setenv("MOODLEOPS_ARTIFACTS", os.environ.get("MOODLEOPS_ARTIFACTS") or str(REPO_ROOT.parent / "shared/artifacts"))
    s3 = moto()
    boto3.client("s3", endpoint_url=s3.url, region_name="eu-west-3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    schools = yaml.safe_load((REPO_ROOT / "inventory/schools.yml").read_text())["schools"]
    w = World(root=root, moto=s3.url, school=schools[0]["code"])
    try:
        yield w
    finally:
        for undo in reversed(w.cleanups):
            undo()
        s3.stop()
        mp.undo()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Fault:
    """How one dependency is made unavailable: inventory variables, environment,
    extra arguments; `where` is the address or path the error line must name."""

    vars: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    where: str = ""
    says: tuple[str, ...] = ()       # more the line must hold (what failed, the file to check)
    no_dac_override: bool = False    # run as root without CAP_DAC_OVERRIDE: file modes apply to it
    host_vars: dict[str, Any] = field(default_factory=dict)   # for the host of hosts.yml
    fill: dict[str, str] = field(default_factory=dict)        # the row's {placeholders}: files, ports


def inventory(w: World, name: str, extra: dict[str, Any], host_vars: dict[str, Any] | None = None) -> Path:
    """A copy of the local inventory with `extra` group_vars, its own state
    directory and the healthy moto bucket; returns the environment directory."""
    root = w.root / name
    env = root / "local"
    (env / "group_vars").mkdir(parents=True, exist_ok=True)
    for f in ("platform.yml", "schools.yml", "moodle.yml", "capacity.yml", "loadmodel.yml"):
        shutil.copy(REPO_ROOT / "inventory" / f, root / f)
    hosts = yaml.safe_load((REPO_ROOT / "inventory/local/hosts.yml").read_text())
    hosts["all"]["hosts"]["localhost"].update(host_vars or {})
    (env / "hosts.yml").write_text(yaml.safe_dump(hosts))
    gv = yaml.safe_load((REPO_ROOT / "inventory/local/group_vars/all.yml").read_text())
    state = root / "state"
    state.mkdir(exist_ok=True)
    gv.update({"moodleops_state_dir": str(state), "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": w.moto,
               "backup_s3_prefix": f"{TAG}/{name}/", "backup_part_size_mb": 5, **extra})
    (env / "group_vars/all.yml").write_text(yaml.safe_dump(gv))
    for p in (root, env, env / "group_vars", state):
        p.chmod(0o755)
    return env


def fake_moodle(w: World, name: str, config_php: str) -> Path:
    """A Moodle root whose config.php is `config_php` and whose admin/cli scripts
    start, as Moodle's do, by requiring it (all readable by the web user)."""
    d = w.root / f"moodle-{name}"
    (d / "admin/cli").mkdir(parents=True, exist_ok=True)
    (d / "config.php").write_text(config_php)
    for script in ("maintenance.php", "cron.php", "cfg.php"):
        (d / "admin/cli" / script).write_text("<?php\nrequire(__DIR__ . '/../../config.php');\n")
    for p in (d, d / "admin", d / "admin/cli"):
        p.chmod(0o755)
    return d


def tmpfs(w: World, name: str, *, full: bool = False, readonly: bool = False) -> Path:
    mnt = w.root / f"mnt-{name}-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    opts = "size=1m,mode=0755" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
    w.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
    if full:
        with open(mnt / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
    return mnt


# -- the faults --------------------------------------------------------------------------

def db_down(w: World) -> Fault:
    port = free_port()
    return Fault(vars={"moodle_db_port": port}, where=f":{port}")


def db_wrong_password(w: World) -> Fault:
    return Fault(env={"MOODLEOPS_DB_RO_PASSWORD": "not-" + uuid.uuid4().hex}, where="moodleops_ro")


PG_BIN = Path("/usr/lib/postgresql/15/bin")
NO_GRANT_PASSWORD = uuid.uuid4().hex


def throwaway_postgres(w: World) -> int:
    """A second PostgreSQL of this test's own (initdb in the test directory, loopback,
    a free port) holding Moodle's schema and a read-only role that was never granted
    SELECT: the shared cluster's roles and pg_hba.conf stay untouched."""
    if w.pg_port:
        return w.pg_port
    d = w.root / "pg"
    d.mkdir()
    shutil.chown(d, "postgres", "postgres")
    port = free_port()

    def pg(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              check=True, **kw)

    pg(str(PG_BIN / "initdb"), "-D", str(d / "data"), "-U", "postgres", "--auth-local=peer",
       "--auth-host=scram-sha-256")
    pg(str(PG_BIN / "pg_ctl"), "-D", str(d / "data"), "-w", "-l", str(d / "log"), "-o",
       f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "start")
    w.cleanups.append(lambda: subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                                              str(d / "data"), "-m", "immediate", "stop"],
                                             capture_output=True, check=False))
    local = ["psql", "-h", str(d), "-p", str(port), "-v", "ON_ERROR_STOP=1", "-Atc"]
    pg(*local, "CREATE DATABASE moodle")
    schema = pg("pg_dump", "-s", "--no-owner", "--no-privileges", "-d", "moodle").stdout
    pg("psql", "-h", str(d), "-p", str(port), "-q", "-d", "moodle", input=schema)
    # The password on stdin, not in argv; and no GRANT at all.
    pg("psql", "-h", str(d), "-p", str(port), "-q", "-v", "ON_ERROR_STOP=1",
       input=f"CREATE ROLE moodleops_ro LOGIN PASSWORD '{NO_GRANT_PASSWORD}';\n")
    w.pg_port = port
    return port


def db_no_grant(w: World) -> Fault:
    port = throwaway_postgres(w)
    return Fault(vars={"moodle_db_port": port}, env={"MOODLEOPS_DB_RO_PASSWORD": NO_GRANT_PASSWORD},
                 where=f"moodleops_ro@127.0.0.1:{port}/moodle")


def db_statement_timeout(w: World) -> Fault:
    return Fault(vars={"storage_statement_timeout_s": 0.001}, where="moodleops_ro@")


def php_missing(w: World) -> Fault:
    return Fault(vars={"php_version": "0.0"}, where="/usr/bin/php0.0")


def php_failing(w: World) -> Fault:
    d = fake_moodle(w, "failing", "<?php\necho \"Database connection failed (fault matrix)\\n\";\nexit(1);\n")
    return Fault(vars={"moodle_current_link": str(d)}, where="Database connection failed")


def php_garbage(w: World) -> Fault:
    d = fake_moodle(w, "garbage", "<?php\necho \"MOODLEOPS-JSON: {this is not json\\n\";\nexit(0);\n")
    return Fault(vars={"moodle_current_link": str(d)}, where="garbage")


def _http(w: World, status: int, body: bytes) -> Fault:
    srv = answering(status, body)
    w.cleanups.append(srv.stop)
    return Fault(vars={"moodle_wwwroot": srv.url}, where=srv.url)


def http_refused(w: World) -> Fault:
    url = f"http://127.0.0.1:{free_port()}"
    return Fault(vars={"moodle_wwwroot": url}, where=url)


def http_5xx(w: World) -> Fault:
    return _http(w, 502, b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")


def http_maintenance(w: World) -> Fault:
    return _http(w, 503, MAINTENANCE_PAGE)


def s3_unreachable(w: World) -> Fault:
    url = f"http://127.0.0.1:{free_port()}"
    return Fault(vars={"backup_s3_endpoint_url": url}, where=url)


def s3_denied(w: World) -> Fault:
    srv = moto(auth=True)
    w.cleanups.append(srv.stop)
    return Fault(vars={"backup_s3_endpoint_url": srv.url}, where=srv.url)


def s3_no_bucket(w: World) -> Fault:
    bucket = f"deleted-{TAG}"
    s3 = w.s3()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    s3.delete_bucket(Bucket=bucket)
    return Fault(vars={"backup_s3_bucket": bucket}, where=bucket)


def s3_throttled(w: World) -> Fault:
    srv = answering(503, SLOW_DOWN)
    w.cleanups.append(srv.stop)
    return Fault(vars={"backup_s3_endpoint_url": srv.url}, where=srv.url)


def s3_throttled_writes(w: World) -> Fault:
    """The bucket answers reads but throttles every write: the run gets as far as its dump."""
    srv = answering(503, SLOW_DOWN, forward=w.moto, fail_methods=("PUT", "POST"))
    w.cleanups.append(srv.stop)
    return Fault(vars={"backup_s3_endpoint_url": srv.url}, where=srv.url)


def _ssh(port: int, key: Path, known_hosts: Path, *, strict: bool = True) -> Fault:
    """The inventory's host is reached over SSH at 127.0.0.1:port as root with `key`,
    host keys checked against `known_hosts`: Ansible (host vars) and the load
    generators of `loadtest run --workers` (the same host, {ssh_*} in the row)."""
    checking = "-o StrictHostKeyChecking=yes" if strict else "-o StrictHostKeyChecking=no"
    return Fault(host_vars={"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": port,
                            "ansible_user": "root", "ansible_ssh_private_key_file": str(key),
                            "ansible_ssh_common_args": f"-o ConnectTimeout=5 -o IdentitiesOnly=yes {checking} "
                                                       f"-o UserKnownHostsFile={known_hosts}"},
                 fill={"ssh_key": str(key), "ssh_known_hosts": str(known_hosts)},
                 where=f"127.0.0.1:{port}")


def ssh_refused(w: World) -> Fault:
    """Nothing listens on the port (bound, then closed)."""
    s = sshd(w)
    f = _ssh(free_port(), s.key, s.known_hosts, strict=False)
    f.says = ("connection refused", "sshd runs")
    return f


def ssh_key_rejected(w: World) -> Fault:
    """The sshd runs; the key offered is not in its authorized_keys."""
    s = sshd(w)
    stranger = w.root / f"stranger-{uuid.uuid4().hex[:6]}"
    keygen(stranger)
    f = _ssh(s.port, stranger, s.known_hosts)
    f.says = ("the key was rejected", "authorized_keys")
    return f


def ssh_host_key_changed(w: World) -> Fault:
    """The sshd runs and accepts the key; known_hosts holds another key for [127.0.0.1]:port."""
    s = sshd(w)
    other = w.root / f"other-host-key-{uuid.uuid4().hex[:6]}"
    kh = w.root / f"known_hosts-{uuid.uuid4().hex[:6]}"
    kh.write_text(f"[127.0.0.1]:{s.port} {keygen(other)}\n", encoding="ascii")
    f = _ssh(s.port, s.key, kh)
    f.where = f"127.0.0.1:{s.port}"
    f.says = (f"the host key changed: {kh} line 1 holds another key for [127.0.0.1]:{s.port}", str(kh))
    return f


LOGIN_FORM = (b"<!DOCTYPE html><html><body><form action=\"/login/index.php\" method=\"post\">"
              b"<input type=\"hidden\" name=\"logintoken\" value=\"x\"></form></body></html>")


def moodle_page(w: World) -> str:
    """A loopback page with Moodle's login form: for rows whose command only checks
    that Moodle answers before it meets the fault under test (never sent load)."""
    if not w.moodle_page:
        srv = answering(200, LOGIN_FORM)
        w.cleanups.append(srv.stop)
        w.moodle_page = srv.url
    return w.moodle_page


def exporter_down(w: World) -> Fault:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    return Fault(fill={"metrics_url": url}, where=url)


def alertmanager_down(w: World) -> Fault:
    port = free_port()
    return Fault(vars={"monitoring_alertmanager_port": port}, where=f"http://127.0.0.1:{port}")


def prometheus_down(w: World) -> Fault:
    url = f"http://127.0.0.1:{free_port()}"
    return Fault(env={"MOODLEOPS_PROMETHEUS_URL": url}, where=url)


def fs_full(w: World) -> Fault:
    mnt = tmpfs(w, "full", full=True)
    return Fault(vars={"moodleops_state_dir": str(mnt)}, where=str(mnt))


def fs_readonly(w: World) -> Fault:
    mnt = tmpfs(w, "ro", readonly=True)
    return Fault(vars={"moodleops_state_dir": str(mnt / "state")}, where=str(mnt))


def fs_denied(w: World) -> Fault:
    d = w.root / f"read-only-mode-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    d.chmod(0o555)      # r-x for its owner: root without CAP_DAC_OVERRIDE cannot write in it
    return Fault(vars={"moodleops_state_dir": str(d)}, where=str(d), no_dac_override=True)


FAULTS: dict[str, Callable[[World], Fault]] = {f.__name__: f for f in (
    db_down, db_wrong_password, db_no_grant, db_statement_timeout,
    php_missing, php_failing, php_garbage,
    http_refused, http_5xx, http_maintenance,
    s3_unreachable, s3_denied, s3_no_bucket, s3_throttled, s3_throttled_writes,
    ssh_refused, ssh_key_rejected, ssh_host_key_changed, alertmanager_down, exporter_down,
    prometheus_down, fs_full, fs_readonly, fs_denied,
)}


# -- the matrix ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]       # after `moodleops --inventory <copy>`; {school}, {state} are filled in
    fault: str
    dependency: str             # the error line starts with it
    status: ExitStatus
    after: str = "unchanged"    # unchanged | partial-resumable
    stack: bool = True          # needs the Moodle stack (a `stack` test, under the stack lock)
    absent: tuple[str, ...] = ()   # paths ({state}) the command must not have created

    @property
    def id(self) -> str:
        return f"{'-'.join(a for a in self.argv[:2])}×{self.fault}"


DEP, FS = ExitStatus.DEPENDENCY, ExitStatus.FILESYSTEM
WHY = ("--reason", "fault matrix", "--ticket", "FAULT-1", "--journal-copy", "-")
LOADTEST_RUN = ("loadtest", "run", "--prefix", "ltfault1", "--shape", "smoke", "--users", "4", "--duration", "20",
                "--think-scale", "0.01", "--fixture-dir", "{state}", "--results", "{state}/results")
# The inventory's host is the load generator, reached over SSH (ansible_connection: ssh, ansible_port).
SSH_WORKERS = ("--workers", "1", "--ssh-user", "root", "--ssh-key", "{ssh_key}", "--ssh-known-hosts",
               "{ssh_known_hosts}")
# A prepared fixture's record (accounts only: these rows stop before any user logs in).
FIXTURE = {"quiz_questions": 2, "password": "fault-matrix", "course_id": 1, "forum_cmid": 1, "discussion_id": 1,
           "discussion_post_id": 1, "resource_cmid": 1, "quiz_cmid": 1, "assign_cmid": 1,
           "students": [{"username": f"ltfault1s{i:04d}"} for i in range(1, 31)],
           "trainers": [{"username": f"ltfault1t{i:04d}"} for i in range(1, 4)]}
MATRIX: tuple[Row, ...] = (
    # database: the read-only role's readers
    Row(("storage", "report"), "db_down", "database", DEP),
    Row(("storage", "report"), "db_wrong_password", "database", DEP),
    Row(("storage", "report"), "db_no_grant", "database", DEP),
    Row(("storage", "report"), "db_statement_timeout", "database", DEP),
    Row(("capacity", "record", "--out", "{state}/history.csv"), "db_down", "database", DEP),
    Row(("capacity", "record", "--out", "{state}/history.csv"), "db_wrong_password", "database", DEP),
    Row(("capacity", "record", "--out", "{state}/history.csv"), "db_no_grant", "database", DEP),
    # Moodle's PHP CLI
    Row(("incident", "suspend", "--school", "{school}", *WHY), "php_missing", "Moodle PHP CLI", DEP),
    Row(("incident", "suspend", "--school", "{school}", *WHY), "php_failing", "Moodle PHP CLI", DEP),
    Row(("incident", "suspend", "--school", "{school}", *WHY), "php_garbage", "Moodle PHP CLI", DEP),
    Row(("platform", "maintenance", "off"), "php_missing", "Moodle PHP CLI", DEP),
    Row(("platform", "maintenance", "off"), "php_failing", "Moodle PHP CLI", DEP),
    Row(("loadtest", "inspect", "--prefix", "ltfault1"), "php_missing", "Moodle PHP CLI", DEP),
    Row(("loadtest", "inspect", "--prefix", "ltfault1"), "php_garbage", "Moodle PHP CLI", DEP),
    Row(("backup", "run"), "php_failing", "Moodle PHP CLI", DEP),
    # Moodle over HTTP
    # Moodle over HTTP (`loadtest run` asks Moodle's login page before it starts Locust)
    Row(LOADTEST_RUN, "http_refused", "Moodle over HTTP", DEP, stack=False),
    Row(LOADTEST_RUN, "http_5xx", "Moodle over HTTP", DEP, stack=False),
    Row(LOADTEST_RUN, "http_maintenance", "Moodle over HTTP", DEP, stack=False),
    # S3
    Row(("backup", "run"), "s3_unreachable", "S3", DEP),
    Row(("backup", "run"), "s3_denied", "S3", DEP),
    Row(("backup", "run"), "s3_no_bucket", "S3", DEP),
    Row(("backup", "run"), "s3_throttled_writes", "S3", DEP, after="partial-resumable"),
    Row(("backup", "list"), "s3_unreachable", "S3", DEP),
    Row(("backup", "list"), "s3_denied", "S3", DEP),
    Row(("backup", "list"), "s3_no_bucket", "S3", DEP),
    Row(("backup", "list"), "s3_throttled", "S3", DEP),
    Row(("backup", "prune", "--confirm"), "s3_unreachable", "S3", DEP),
    Row(("backup", "prune", "--confirm"), "s3_no_bucket", "S3", DEP),
    Row(("backup", "export-status"), "s3_unreachable", "S3", DEP),
    Row(("backup", "export-status"), "s3_denied", "S3", DEP),
    Row(("backup", "export", "--school", "{school}"), "s3_unreachable", "S3", DEP),
    # SSH to a host: the playbooks' (Ansible), the load generators' (`loadtest run --workers`)
    Row(("platform", "up", "--check"), "ssh_refused", "SSH", DEP, stack=False),
    Row(("platform", "up", "--check"), "ssh_key_rejected", "SSH", DEP, stack=False),
    Row(("platform", "up", "--check"), "ssh_host_key_changed", "SSH", DEP, stack=False),
    Row(("platform", "upgrade"), "ssh_key_rejected", "SSH", DEP, stack=False),
    Row(("platform", "upgrade"), "ssh_host_key_changed", "SSH", DEP, stack=False),
    Row((*LOADTEST_RUN, *SSH_WORKERS), "ssh_refused", "SSH", DEP, stack=False),
    Row((*LOADTEST_RUN, *SSH_WORKERS), "ssh_key_rejected", "SSH", DEP, stack=False),
    Row((*LOADTEST_RUN, *SSH_WORKERS), "ssh_host_key_changed", "SSH", DEP, stack=False),
    # Alertmanager (the scope of a runbook taken from a firing alert)
    Row(("incident", "suspend", "--users-from-alert", "MoodleMassMailingByUser", *WHY), "alertmanager_down",
        "Alertmanager", DEP, stack=False),
    Row(("incident", "messaging", "suspend", "--users-from-alert", "MoodleMassMailingByUser", *WHY),
        "alertmanager_down", "Alertmanager", DEP, stack=False),
    # Prometheus (the storage history of forecasts and reviews)
    Row(("capacity", "forecast"), "prometheus_down", "Prometheus", DEP, stack=False),
    Row(("capacity", "review", "--school", "{school}", "--out", "{state}/reviews"), "prometheus_down",
        "Prometheus", DEP, stack=False, absent=("{state}/reviews",)),
    # the storage exporter's /metrics, read directly when no Prometheus keeps the history
    Row(("capacity", "record", "--from-metrics", "{metrics_url}", "--out", "{state}/history.csv"), "exporter_down",
        "exporter", DEP, stack=False, absent=("{state}/history.csv",)),
    # the local filesystem
    Row(("capacity", "record", "--out", "{state}/history.csv"), "fs_full", "filesystem", FS),
    Row(("capacity", "record", "--out", "{state}/history.csv"), "fs_readonly", "filesystem", FS),
    Row(("backup", "run"), "fs_full", "filesystem", FS),
    Row(("backup", "run"), "fs_readonly", "filesystem", FS),
    Row(("backup", "run"), "fs_denied", "filesystem", FS),
    Row(("capacity", "record", "--out", "{state}/history.csv"), "fs_denied", "filesystem", FS),
)


def run_cli(env_dir: Path, argv: list[str], fault: Fault) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **fault.env}     # secrets go through the environment, never argv
    cmd = [PYTHON, "-m", "moodleops.cli", "--inventory", str(env_dir), *argv]
    if fault.no_dac_override:
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=env_dir.parent,
                          check=False)


def _one_line(proc: subprocess.CompletedProcess[str], row: Row, fault: Fault) -> str:
    err = proc.stderr
    assert "Traceback" not in err, err
    ours = [ln for ln in err.splitlines() if ln.startswith("moodleops:")]
    assert len(ours) == 1, err
    line = ours[0]
    assert line.startswith(f"moodleops: error: {row.dependency}"), line
    assert fault.where in line, (fault.where, line)
    for text in fault.says:
        assert text in line, (text, line)
    assert "(check " in line, line
    assert proc.returncode == row.status, (proc.returncode, line)
    return line


@dataclass
class Outcome:
    row: Row
    fault: Fault
    state: Path
    proc: subprocess.CompletedProcess[str]
    changed: list[str]                  # objects that appeared under the row's own prefix
    again: subprocess.CompletedProcess[str] | None = None   # the re-run with the dependency back


def _run_row(w: World, row: Row, fault: Fault, name: str, env_dir: Path, state: Path) -> Outcome:
    argv = [a.format(school=w.school, state=state, **fault.fill) for a in row.argv]
    before = set(w.objects(name))
    proc = run_cli(env_dir, argv, fault)
    changed = sorted(set(w.objects(name)) - before)
    changed += [p for p in (a.format(state=state) for a in row.absent) if Path(p).exists()]
    again = None
    if row.after == "partial-resumable" and proc.returncode == row.status:
        healthy = inventory(w, name, {"backup_s3_endpoint_url": w.moto})   # same state directory
        again = run_cli(healthy, ["backup", "run"], Fault())
    return Outcome(row, fault, state, proc, changed, again)


def _outcomes(w: World, rows: list[Row]) -> dict[str, Outcome]:
    """Faults are built one after the other, then four commands (mostly waiting
    on retries and timeouts) run side by side."""
    jobs = []
    for row in rows:
        fault = FAULTS[row.fault](w)
        if row.argv[:2] == ("loadtest", "run") and not row.stack:
            # Moodle answers (its login form) unless the fault is Moodle's: the row meets its own fault.
            fault.vars.setdefault("moodle_wwwroot", moodle_page(w))
        name = f"{row.id.replace('×', '-')}-{uuid.uuid4().hex[:4]}"
        env_dir = inventory(w, name, fault.vars, fault.host_vars)
        state = Path(yaml.safe_load((env_dir / "group_vars/all.yml").read_text())["moodleops_state_dir"])
        if row.argv[:2] == ("loadtest", "run"):
            (state / "ltfault1.json").write_text(json.dumps(FIXTURE))   # a prepared fixture's record
        jobs.append((row, fault, name, env_dir, state))
    # Rows of one command run one after the other: a command may take a lock of its own
    # (the platform lock of `platform maintenance`), and a row must meet its fault, not its neighbour.
    groups: dict[tuple[str, ...], list[Any]] = {}
    for job in jobs:
        groups.setdefault(job[0].argv[:2], []).append(job)
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = [o for group in pool.map(lambda g: [_run_row(w, *j) for j in g], groups.values())
                for o in group]
    return {o.row.id: o for o in done}


@pytest.fixture(scope="module")
def stack_outcomes(world: World, provisioned: object) -> dict[str, Outcome]:
    return _outcomes(world, [r for r in MATRIX if r.stack])


@pytest.fixture(scope="module")
def free_outcomes(world: World) -> dict[str, Outcome]:
    return _outcomes(world, [r for r in MATRIX if not r.stack])


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.stack] if r.stack else [])
                                 for r in MATRIX])
def test_fault(request: pytest.FixtureRequest, row: Row) -> None:
    out = request.getfixturevalue("stack_outcomes" if row.stack else "free_outcomes")[row.id]
    line = _one_line(out.proc, row, out.fault)
    if row.after == "unchanged":
        assert out.changed == [], line
        assert not (out.state / "backup" / "run.json").exists(), line
        assert not (out.state / "incidents" / "journal.jsonl").exists(), line
        if row.argv[:2] == ("loadtest", "run"):
            # No load was sent: a Locust run writes its statistics; none may exist.
            assert not list(out.state.glob("results/locust_stats*.csv")), line
        if row.fault.startswith("ssh_") and row.argv[:2] == ("loadtest", "run"):
            assert "no load was sent" in line, line
        return
    # Partial: the dump was taken and kept, nothing listed as a backup; the line says so
    # and a re-run with S3 back resumes the same backup instead of starting over.
    assert "database dump taken" in line and "resumes" in line, line
    found = re.search(r"; backup (\d{8}T\d{6}Z): ", line)
    assert found, line
    assert out.again is not None and out.again.returncode == 0, out.again and out.again.stderr
    assert f"backup {found.group(1)} (resumed)" in out.again.stdout, out.again.stdout


def test_help_documents_the_table() -> None:
    out = subprocess.run([PYTHON, "-m", "moodleops.cli", "--help"], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout
    for status in ExitStatus:
        assert f"  {int(status):<3} " in out, status


def test_debug_shows_the_traceback(world: World) -> None:
    fault = s3_unreachable(world)
    env_dir = inventory(world, f"debug-{uuid.uuid4().hex[:4]}", fault.vars)
    proc = subprocess.run([PYTHON, "-m", "moodleops.cli", "--debug", "--inventory", str(env_dir), "backup", "list"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == ExitStatus.DEPENDENCY
    assert "Traceback" in proc.stderr and "EndpointConnectionError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("moodleops: error: S3 ")


def test_matrix_covers_every_fault() -> None:
    assert {r.fault for r in MATRIX} == set(FAULTS)


# -- what a restore had done when S3 failed under it ---------------------------------------

def _restore_case(w: World, fail_path: str) -> tuple[str, Path, Any]:
    """A backup in the bucket (dump, moodledata archive, two filedir blobs, its manifest),
    read back through a loopback proxy that throttles the GETs matching `fail_path`;
    the target is a copy of the inventory whose dataroot is a fresh directory and whose
    database port is closed (nothing of the shared stack can be reached from it).
    Returns the one line of the fault, the target's dataroot and the translated error."""
    import hashlib
    import io
    import tarfile

    from moodleops.backup import restore
    from moodleops.backup.config import backup_config
    from moodleops.backup.s3 import client
    from moodleops.errors import S3Error
    from moodleops.faults import translate
    from moodleops.inventory import load_inventory
    from moodleops.site import site_of

    name = f"restore-{uuid.uuid4().hex[:6]}"
    proxy = answering(503, SLOW_DOWN, forward=w.moto, fail_methods=("GET",), fail_path=fail_path)
    w.cleanups.append(proxy.stop)
    dataroot = w.root / f"{name}-dataroot"
    env_dir = inventory(w, name, {"backup_s3_endpoint_url": proxy.url, "moodle_dataroot": str(dataroot),
                                  "moodle_db_port": free_port()})
    inv = load_inventory(str(env_dir))
    cfg = backup_config(inv)
    s3 = w.s3()
    prefix = f"{TAG}/{name}/"
    dump = os.urandom(200_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"lang pack"
        info = tarfile.TarInfo("lang/fr/langconfig.php")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    blobs = [b"first blob", b"second blob"]
    sha1s = [hashlib.sha1(b).hexdigest() for b in blobs]
    for key, body in [(f"{prefix}db/{name}.dump", dump), (f"{prefix}moodledata/{name}.tar.gz", archive),
                      *((f"{prefix}blobs/{h}", b) for h, b in zip(sha1s, blobs, strict=True))]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    m = {"id": name, "env": "local",
         "database": {"key": f"{prefix}db/{name}.dump", "sha256": hashlib.sha256(dump).hexdigest(),
                      "size": len(dump)},
         "moodledata": {"key": f"{prefix}moodledata/{name}.tar.gz", "sha256": hashlib.sha256(archive).hexdigest(),
                        "size": len(archive), "included": ["lang"]},
         "blobs": {"sha1": sha1s, "count": 2, "bytes": sum(map(len, blobs))}}
    target = site_of(inv)
    p = restore.RestorePlan(manifest_key=f"{prefix}manifests/{name}.json", manifest=m, target=target)
    with pytest.raises(Exception) as caught:
        restore.apply(client(cfg), cfg, p, inv)
    err = translate(caught.value, {S3Error: f"s3://{BUCKET}/{prefix} at {proxy.url}"})
    assert err is not None, caught.value
    return err.line(), dataroot, err


def test_restore_says_what_it_had_done_when_the_archive_cannot_be_read(world: World) -> None:
    line, dataroot, err = _restore_case(world, r"/moodledata/")
    assert err.status == ExitStatus.DEPENDENCY, line
    assert line.startswith("S3 s3://") and "throttling" in line, line
    assert line.endswith("database dump downloaded and verified, moodledata archive not; nothing on the target "
                         "was changed: a re-run downloads again"), line
    assert not dataroot.exists(), line


def test_restore_says_what_it_had_done_when_blobs_cannot_be_read(world: World) -> None:
    line, dataroot, err = _restore_case(world, r"/blobs/")
    assert err.status == ExitStatus.DEPENDENCY, line
    assert "filedir blobs being put back (content-addressed: a re-run skips those present); the target's " \
           "database and moodledata folders untouched" in line, line
    # The dump and archive were verified; no moodledata folder was replaced, no maintenance flag written.
    assert not (dataroot / "lang").exists() and not (dataroot / "climaintenance.html").exists(), line
