"""Locust workers on the load-generator hosts, started and stopped over SSH.

A worker is `python -m moodleops.loadtests.worker` of the host's own
installation: the toolkit role's virtualenv on an inventory's load generator
(connected as Ansible connects: moodleops.platform.host_access), or, with
explicit SSH options, the same checkout's Python at the same path. The plan
(it holds the fixture's password) goes over SSH's stdin into a 0600 file, never
into a command line. Workers are started in the foreground of their ssh session
and record their pid; stop() waits for them to leave with the master, then
kills what is left and removes the plan.
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
from moodleops.inventory import Host, Inventory

REMOTE_DIR = "/tmp/moodleops-loadtest"      # plan and pid files on the load generators


class WorkerHostError(SshError, LoadtestError):
    """A load generator could not be reached or refused a command over SSH: the
    one line of moodleops.errors (SSH host:port, what failed, what to check)."""


@dataclass(frozen=True)
class SshOptions:
    """Explicit SSH options (`loadtest run --ssh-*`): the load generators hold
    this checkout at the same path."""
    user: str | None = None
    port: int | None = None            # None: the host's ansible_port, else 22
    identity: Path | None = None
    known_hosts: Path | None = None
    remote_python: str = sys.executable
    remote_dir: str = REMOTE_DIR
    connect_timeout_s: int = 10

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.user, self.port, self.identity, self.known_hosts))


@dataclass(frozen=True)
class WorkerHost:
    host: Host
    ssh: tuple[str, ...]      # OpenSSH's argv, up to and including the address
    python: str               # the Python there that holds moodleops and Locust
    port: int
    user: str = ""
    identity: str = ""
    known_hosts: str = ""

    @classmethod
    def with_options(cls, host: Host, o: SshOptions) -> WorkerHost:
        from moodleops.platform.host_access import openssh_argv

        port = o.port or host.port or 22
        user, identity, known_hosts = o.user or "", str(o.identity or ""), str(o.known_hosts or "")
        argv = openssh_argv(host.address, user=user, port=port, identity=identity, known_hosts=known_hosts,
                            timeout_s=o.connect_timeout_s)
        return cls(host, tuple(argv), o.remote_python, port, user, identity, known_hosts)

    @classmethod
    def of_inventory(cls, inv: Inventory, host: Host, timeout_s: int = 10) -> WorkerHost:
        """As Ansible reaches the host, running the toolkit role's virtualenv
        (the loadgen play installs Locust there)."""
        from moodleops.platform.ansible_view import AnsibleViewError
        from moodleops.platform.host_access import PyinfraHostError, ssh_argv

        try:
            argv, data = ssh_argv(inv, host, timeout_s=timeout_s)
        except (AnsibleViewError, PyinfraHostError) as exc:
            raise LoadtestError(f"load generator {host.name}: {exc}") from None
        return cls(host, tuple(argv), f"{data['toolkit_venv']}/bin/python", int(data.get("ssh_port", 22)),
                   str(data.get("ssh_user", "")), str(data.get("ssh_key", "")),
                   str(data.get("ssh_known_hosts_file", "")))


def master_address(hosts: list[Host]) -> str:
    """The address of this machine on the route to the first load generator."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((hosts[0].address, 9))        # UDP connect: no packet is sent
        return str(s.getsockname()[0])


class RemoteWorkers:
    def __init__(self, hosts: list[WorkerHost], *, remote_dir: str = REMOTE_DIR, connect_timeout_s: int = 10) -> None:
        if not hosts:
            raise LoadtestError("--workers: no load-generator host to start workers on")
        self.hosts = hosts
        self.remote_dir = remote_dir
        self.timeout_s = connect_timeout_s
        self.run_id = uuid.uuid4().hex[:12]
        self.procs: list[tuple[WorkerHost, int, subprocess.Popen[bytes]]] = []
        self.used: list[WorkerHost] = []

    @classmethod
    def with_options(cls, hosts: list[Host], opts: SshOptions) -> RemoteWorkers:
        return cls([WorkerHost.with_options(h, opts) for h in hosts], remote_dir=opts.remote_dir,
                   connect_timeout_s=opts.connect_timeout_s)

    def _plan_path(self) -> str:
        return f"{self.remote_dir}/plan-{self.run_id}.json"

    def _pid_path(self, index: int) -> str:
        return f"{self.remote_dir}/worker-{self.run_id}-{index}.pid"

    def _fault(self, w: WorkerHost, message: str) -> WorkerHostError:
        base = ssh_fault(f"{w.host.address}:{w.port}", message, known_hosts=w.known_hosts, user=w.user,
                         identity=w.identity)
        err = WorkerHostError(base.address, base.problem, base.check)
        err.address = f"{base.address} (load generator {w.host.name})"
        return err

    def _run(self, w: WorkerHost, command: str, stdin: bytes | None = None) -> None:
        try:
            res = subprocess.run([*w.ssh, command], input=stdin, capture_output=True,
                                 timeout=self.timeout_s + 20, check=False)
        except subprocess.TimeoutExpired:
            raise self._fault(w, "timed out") from None
        if res.returncode != 0:
            raise self._fault(w, res.stderr.decode(errors="replace") or f"ssh exited {res.returncode}")

    def start(self, plan_path: Path, workers: int, master_host: str, master_port: int = 5557) -> None:
        """Copy the plan to every host used, then start `workers` workers round-robin."""
        self.used = [self.hosts[i % len(self.hosts)] for i in range(min(workers, len(self.hosts)))]
        plan = plan_path.read_bytes()
        d = shlex.quote(self.remote_dir)
        try:
            for w in self.used:
                self._run(w, f"umask 077 && mkdir -p {d} && cat > {shlex.quote(self._plan_path())}", stdin=plan)
            for i in range(workers):
                w = self.hosts[i % len(self.hosts)]
                cmd = (f"cd {d} && echo $$ > {shlex.quote(self._pid_path(i))} && "
                       f"MOODLEOPS_LOADTEST_PLAN={shlex.quote(self._plan_path())} exec "
                       + " ".join(shlex.quote(a) for a in [w.python, "-m", "moodleops.loadtests.worker",
                                                            master_host, str(master_port)]))
                proc = subprocess.Popen([*w.ssh, cmd], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self.procs.append((w, i, proc))
        except BaseException:
            self.stop()
            raise

    @property
    def host_names(self) -> list[str]:
        return [w.host.name for w in self.used]

    def stop(self, wait_s: float = 20) -> list[str]:
        """Wait for the workers to leave, kill the rest over SSH, remove the plan;
        returns one line per problem (a worker that had to be killed)."""
        problems: list[str] = []
        for w, i, proc in self.procs:
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                problems.append(f"worker {i} on {w.host.name} did not stop with the master: killed")
                pid = shlex.quote(self._pid_path(i))
                try:
                    self._run(w, f"test -f {pid} && kill $(cat {pid}) 2>/dev/null; true")
                except WorkerHostError as exc:
                    problems.append(exc.line())
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
        for w in self.used:
            try:
                self._run(w, f"rm -f {shlex.quote(self._plan_path())} "
                             f"{shlex.quote(self.remote_dir)}/worker-{self.run_id}-*.pid")
            except WorkerHostError as exc:
                problems.append(exc.line())
        self.procs.clear()
        return problems
