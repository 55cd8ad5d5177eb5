"""`moodleops backup run | list | prune | restore` for a platform whose Moodle
is not on this machine (the rehearsal, production from an operator's
machine): the same command runs on the job host, the first host of
backup_schedule_group, through the jobs' launcher the backup_schedule role
installed there with their environment (S3 credentials, the manifest key, the
database owner's password). No secret crosses from this machine; the report
and the progress come back over SSH, and the command's exit status is kept."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from moodleops.errors import ExitStatus
from moodleops.inventory import Host, Inventory
from moodleops.platform.ansible_view import AnsibleViewError, role_vars
from moodleops.platform.host_access import PyinfraHostError, RemoteCommandFailed, run_moodleops

_VARS = ("backup_schedule_group", "backup_schedule_runner", "backup_schedule_launcher", "backup_schedule_inventory")


class JobHostError(RuntimeError):
    """No job host to run on (none configured, nothing installed, no way in)."""


@dataclass(frozen=True)
class JobHost:
    host: Host
    launcher: str       # backup-jobs: `moodleops backup CMD` with the jobs' environment
    inventory: str      # the host's copy of this inventory (a path there)


def job_host(inv: Inventory) -> JobHost:
    try:
        v = role_vars(inv, "backup_schedule", "web", _VARS)
        if v["backup_schedule_group"] != "web":
            v = role_vars(inv, "backup_schedule", str(v["backup_schedule_group"]), _VARS)
    except AnsibleViewError as exc:
        raise JobHostError(str(exc)) from None
    host = inv.group(str(v["backup_schedule_group"]))[0]
    if v["backup_schedule_runner"] == "none":
        raise JobHostError(f"inventory {inv.env}: backup_schedule_runner is none, so nothing is installed on the "
                           f"job host {host.name}: set it to manual (or a scheduler) and run `moodleops -i "
                           f"{inv.env} platform up`")
    return JobHost(host, str(v["backup_schedule_launcher"]), str(v["backup_schedule_inventory"]))


def run_there(inv: Inventory, command: str, *args: str, onto_itself: bool = False) -> int:
    """`moodleops backup COMMAND ARGS` on the job host; its exit status.
    `onto_itself`: with `--target-inventory` naming the host's own copy of the
    inventory (a restore onto this platform)."""
    try:
        jh = job_host(inv)
        if onto_itself:
            args = (*args, "--target-inventory", jh.inventory)
        print(f"running `backup {command}` on {jh.host.name} over SSH (Moodle is not on this machine)",
              file=sys.stderr, flush=True)
        run_moodleops(inv, jh.host, command, *args, timeout_s=24 * 3600, capture=False, program=jh.launcher,
                      what=f"moodleops backup {command}")
    except (JobHostError, PyinfraHostError) as exc:      # the inventory's: nothing was run
        print(f"moodleops: error: backup {command}: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except TimeoutError as exc:
        print(f"moodleops: error: backup {command} on {jh.host.name}: {exc}; it may still run there (its lock "
              "says so): check with `moodleops platform status`", file=sys.stderr)
        return ExitStatus.DEPENDENCY
    except RemoteCommandFailed as exc:
        print(f"moodleops: error: on {jh.host.name}: {exc}", file=sys.stderr)
        return exc.status
    return 0
