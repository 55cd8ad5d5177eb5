"""Locust workers on the load-generator hosts, started and stopped over SSH.

Each load generator holds the same checkout at the same path (the toolkit is
deployed the same way everywhere), so a worker is this checkout's Python
running this locustfile. The plan (it holds the fixture's password) goes over
SSH's stdin into a 0600 file, never into a command line. Workers are started
in the foreground of their ssh session and record their pid; stop() waits
for them to leave with the master, then kills what is left and removes the
plan.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from moodleops.loadtests.fixture import LoadtestError

from moodleops.errors import SshError
from moodleops.faults import ssh_fault
from moodleops.inventory import Host

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class WorkerHostError(SshError, LoadtestError):
    """A load generator could not be reached or refused a command over SSH: the
    one line of moodleops.errors (SSH host:port, what failed, what to check)."""


@dataclass(frozen=True)
class SshOptions:
    user: str | None = None
    port: int | None = None            # None: the host's ansible_port, else 22
    identity: Path | None = None
    known_hosts: Path | None = None
    remote_python: str = sys.executable
    remote_dir: str = "/tmp/moodleops-loadtest"   # plan and pid files on the load generators
    connect_timeout_s: int = 10


def master_address(hosts: list[Host]) -> str:
    """The address of this machine on the route to the first load generator."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((hosts[0].address, 9))        # UDP connect: no packet is sent
        return str(s.getsockname()[0])


class RemoteWorkers:
    def __init__(self, hosts: list[Host], opts: SshOptions) -> None:
        if not hosts:
            raise LoadtestError("--workers: no load-generator host to start workers on")
        self.hosts = hosts
        self.opts = opts
        self.run_id = uuid.uuid4().hex[:12]
        self.procs: list[tuple[Host, int, subprocess.Popen[bytes]]] = []
        self.used: list[Host] = []

    def port(self, host: Host) -> int:
        return self.opts.port or host.port or 22

    def ssh(self, host: Host) -> list[str]:
        o = self.opts
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"ConnectTimeout={o.connect_timeout_s}", "-o", "ServerAliveInterval=15",
               "-p", str(self.port(host))]
        if o.identity is not None:
            cmd += ["-i", str(o.identity), "-o", "IdentitiesOnly=yes"]
        if o.known_hosts is not None:
            cmd += ["-o", f"UserKnownHostsFile={o.known_hosts}"]
        return [*cmd, f"{o.user}@{host.address}" if o.user else host.address]

    def _plan_path(self) -> str:
        return f"{self.opts.remote_dir}/plan-{self.run_id}.json"

    def _pid_path(self, index: int) -> str:
        return f"{self.opts.remote_dir}/worker-{self.run_id}-{index}.pid"

    def _fault(self, host: Host, message: str) -> WorkerHostError:
        o = self.opts
        base = ssh_fault(f"{host.address}:{self.port(host)}", message,
                         known_hosts=str(o.known_hosts) if o.known_hosts else "", user=o.user or "",
                         identity=str(o.identity) if o.identity else "")
        err = WorkerHostError(base.address, base.problem, base.check)
        err.address = f"{base.address} (load generator {host.name})"
        return err

    def _run(self, host: Host, command: str, stdin: bytes | None = None) -> None:
        try:
            res = subprocess.run([*self.ssh(host), command], input=stdin, capture_output=True,
                                 timeout=self.opts.connect_timeout_s + 20, check=False)
        except subprocess.TimeoutExpired:
            raise self._fault(host, "timed out") from None
        if res.returncode != 0:
            raise self._fault(host, res.stderr.decode(errors="replace") or f"ssh exited {res.returncode}")

    def start(self, plan_path: Path, workers: int, master_host: str, master_port: int = 5557) -> None:
        """Copy the plan to every host used, then start `workers` workers round-robin."""
        self.used = [self.hosts[i % len(self.hosts)] for i in range(min(workers, len(self.hosts)))]
        plan = plan_path.read_bytes()
        d = shlex.quote(self.opts.remote_dir)
        try:
            for host in self.used:
                self._run(host, f"umask 077 && mkdir -p {d} && cat > {shlex.quote(self._plan_path())}", stdin=plan)
            for i in range(workers):
                host = self.hosts[i % len(self.hosts)]
                cmd = (f"cd {d} && echo $$ > {shlex.quote(self._pid_path(i))} && "
                       f"MOODLEOPS_LOADTEST_PLAN={shlex.quote(self._plan_path())} exec "
                       + " ".join(shlex.quote(a) for a in [
                           self.opts.remote_python, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                           "--loglevel", "WARNING", "--worker", "--master-host", master_host,
                           "--master-port", str(master_port)]))
                proc = subprocess.Popen([*self.ssh(host), cmd], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self.procs.append((host, i, proc))
        except BaseException:
            self.stop()
            raise

    def stop(self, wait_s: float = 20) -> list[str]:
        """Wait for the workers to leave, kill the rest over SSH, remove the plan;
        returns one line per problem (a worker that had to be killed)."""
        problems: list[str] = []
        for host, i, proc in self.procs:
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                problems.append(f"worker {i} on {host.name} did not stop with the master: killed")
                pid = shlex.quote(self._pid_path(i))
                try:
                    self._run(host, f"test -f {pid} && kill $(cat {pid}) 2>/dev/null; true")
                except WorkerHostError as exc:
                    problems.append(exc.line())
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        for host in self.used:
            try:
                self._run(host, f"rm -f {shlex.quote(self._plan_path())} "
                                f"{shlex.quote(self.opts.remote_dir)}/worker-{self.run_id}-*.pid")
            except WorkerHostError as exc:
                problems.append(exc.line())
        self.procs.clear()
        self.used = []
        return problems
