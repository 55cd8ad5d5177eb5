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
builder to FAULTS. README.md records the size of the matrix."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
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

from moodleops import REPO_ROOT
from moodleops.errors import ExitStatus

pytestmark = pytest.mark.stack

TAG = "f" + uuid.uuid4().hex[:8]
BUCKET = "moodleops-fault-matrix"
PYTHON = sys.executable


def free_port() -> int:
    """A port that was just bound and closed: nothing listens on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers the faults need ------------------------------------------------------------

class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's (status, body); with `forward`,
    requests whose method is not in `fail_methods` go to that base URL instead."""

    def _handle(self) -> None:
        srv: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if srv.forward and self.command not in srv.fail_methods:
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


def answering(status: int, body: bytes, *, forward: str = "", fail_methods: tuple[str, ...] = ()) -> Server:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    srv.answer, srv.forward, srv.fail_methods = (status, body), forward, fail_methods  # type: ignore[attr-defined]
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


# -- the world every row runs in ------------------------------------------------------------

@dataclass
class World:
    root: Path            # temporary directory of this test module (0755: the web user reads it)
    moto: str             # a healthy S3 API on loopback with the bucket
    school: str           # a school code of the inventory
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    pg_port: int = 0      # the throwaway PostgreSQL, once started

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.moto, region_name="eu-west-3")

    def objects(self, name: str) -> list[str]:
        got = self.s3().list_objects_v2(Bucket=BUCKET, Prefix=f"{TAG}/{name}/")
        return [o["Key"] for o in got.get("Contents", [])]


@pytest.fixture(scope="module")
def world(provisioned: object) -> Iterator[World]:
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
    no_dac_override: bool = False    # run as root without CAP_DAC_OVERRIDE: file modes apply to it
    host_vars: dict[str, Any] = field(default_factory=dict)   # for the host of hosts.yml


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


def ssh_refused(w: World) -> Fault:
    port = free_port()
    return Fault(host_vars={"ansible_connection": "ssh", "ansible_port": port,
                            "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no "
                                                       "-o UserKnownHostsFile=/dev/null"},
                 where=f"127.0.0.1:{port}")


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
    ssh_refused, prometheus_down, fs_full, fs_readonly, fs_denied,
)}


# -- the matrix ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]       # after `moodleops --inventory <copy>`; {school}, {state} are filled in
    fault: str
    dependency: str             # the error line starts with it
    status: ExitStatus
    after: str = "unchanged"    # unchanged | partial-resumable

    @property
    def id(self) -> str:
        return f"{'-'.join(a for a in self.argv[:2])}×{self.fault}"


DEP, FS = ExitStatus.DEPENDENCY, ExitStatus.FILESYSTEM
WHY = ("--reason", "fault matrix", "--ticket", "FAULT-1", "--journal-copy", "-")
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
    Row(("loadtest", "run", "--prefix", "ltfault1", "--shape", "smoke", "--fixture-dir", "{state}"),
        "http_refused", "Moodle over HTTP", DEP),
    Row(("loadtest", "run", "--prefix", "ltfault1", "--shape", "smoke", "--fixture-dir", "{state}"),
        "http_5xx", "Moodle over HTTP", DEP),
    Row(("loadtest", "run", "--prefix", "ltfault1", "--shape", "smoke", "--fixture-dir", "{state}"),
        "http_maintenance", "Moodle over HTTP", DEP),
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
    # SSH to a host (the playbooks')
    Row(("platform", "up", "--check"), "ssh_refused", "SSH", DEP),
    # Prometheus
    Row(("capacity", "forecast"), "prometheus_down", "Prometheus", DEP),
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
    argv = [a.format(school=w.school, state=state) for a in row.argv]
    before = set(w.objects(name))
    proc = run_cli(env_dir, argv, fault)
    changed = sorted(set(w.objects(name)) - before)
    again = None
    if row.after == "partial-resumable" and proc.returncode == row.status:
        healthy = inventory(w, name, {"backup_s3_endpoint_url": w.moto})   # same state directory
        again = run_cli(healthy, ["backup", "run"], Fault())
    return Outcome(row, fault, state, proc, changed, again)


@pytest.fixture(scope="module")
def outcomes(world: World) -> dict[str, Outcome]:
    """Every row: faults are built here one after the other, then four commands
    (mostly waiting on retries and timeouts) run side by side."""
    jobs = []
    for row in MATRIX:
        fault = FAULTS[row.fault](world)
        name = f"{row.id.replace('×', '-')}-{uuid.uuid4().hex[:4]}"
        env_dir = inventory(world, name, fault.vars, fault.host_vars)
        state = Path(yaml.safe_load((env_dir / "group_vars/all.yml").read_text())["moodleops_state_dir"])
        if row.argv[:2] == ("loadtest", "run"):
            # A prepared fixture's record, large enough for the smoke shape: the run reaches Moodle.
            record = {"prefix": "ltfault1", "password": "x", "quiz_questions": 3, "course_id": 1,
                      "forum_cmid": 1, "discussion_id": 1, "discussion_post_id": 1, "resource_cmid": 1,
                      "quiz_cmid": 1, "assign_cmid": 1,
                      "students": [{"username": f"ltfault1s{i:04d}", "course": 0} for i in range(60)],
                      "trainers": [{"username": f"ltfault1t{i:04d}", "course": 0} for i in range(10)]}
            (state / "ltfault1.json").write_text(json.dumps(record))
        jobs.append((row, fault, name, env_dir, state))
    # Rows of one command run one after the other: a command may take a lock of its own
    # (the platform lock of `platform maintenance`), and a row must meet its fault, not its neighbour.
    groups: dict[tuple[str, ...], list[Any]] = {}
    for job in jobs:
        groups.setdefault(job[0].argv[:2], []).append(job)
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = [o for group in pool.map(lambda g: [_run_row(world, *j) for j in g], groups.values())
                for o in group]
    return {o.row.id: o for o in done}


@pytest.mark.parametrize("row", MATRIX, ids=[r.id for r in MATRIX])
def test_fault(outcomes: dict[str, Outcome], row: Row) -> None:
    out = outcomes[row.id]
    line = _one_line(out.proc, row, out.fault)
    if row.after == "unchanged":
        assert out.changed == [], line
        assert not (out.state / "backup" / "run.json").exists(), line
        assert not (out.state / "incidents" / "journal.jsonl").exists(), line
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
