"""Provision the local stack once per code version: the integration tests (and
anything else that needs the stack) call `ensure_provisioned`, which runs
playbooks/site.yml unless this same code provisioned the stack before AND it
is alive now (services do not survive the end of a session or a reboot), and
never two runs at once."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moodleops import REPO_ROOT
from moodleops.inventory import Inventory
from moodleops.platform.ansible import PlaybookResult, run_playbook
from moodleops.platform.secrets import ensure_local_secrets
from moodleops.site import Site, site_of

LOCK_FILE = Path("/var/lock/moodleops-provision.lock")
# Everything site.yml reads or deploys: the monitoring role installs the
# toolkit's own code (moodleops, exporters, ...) on the monitoring host.
FINGERPRINTED = ("ansible.cfg", "playbooks", "inventory", "moodleops", "exporters", "capacity", "loadtests",
                 "pyproject.toml", "requirements.txt")


def code_fingerprint() -> str:
    """sha256 over every file the provisioning depends on (secrets excluded)."""
    digest = hashlib.sha256()
    for top in FINGERPRINTED:
        base = REPO_ROOT / top
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            rel = path.relative_to(REPO_ROOT).as_posix()
            if "/.secrets/" in rel or "__pycache__" in rel or ".egg-info" in rel:
                continue
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stack_alive(site: Site) -> bool:
    """Moodle answers its login page (nginx, php-fpm and PostgreSQL up) and
    every supervised program (cron, monitoring) is running."""
    import requests
    try:
        page = requests.get(site.wwwroot + "/login/index.php", timeout=10)
    except requests.RequestException:
        return False
    supervised = subprocess.run(["supervisorctl", "status"], capture_output=True, text=True, check=False)
    return page.status_code == 200 and "logintoken" in page.text and supervised.returncode == 0


@contextmanager
def provisioning_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_provisioned(inv: Inventory, *, echo: bool = False) -> PlaybookResult | None:
    """Run site.yml unless this exact code already provisioned this stack.
    Returns the run's result, or None when nothing had to run."""
    if not inv.is_loopback_only:
        raise RuntimeError(f"refusing to provision inventory '{inv.env}' from tests: not loopback-only")
    site = site_of(inv)
    assert site.secrets_dir is not None
    stamp = site.state_dir / f"provisioned-{code_fingerprint()}"
    with provisioning_lock():
        if stamp.exists() and stack_alive(site):
            return None
        ensure_local_secrets(site.secrets_dir)
        result = run_playbook(inv, "site.yml", echo=echo)
        if not result.ok:
            tail = "\n".join(result.output[-40:])
            raise RuntimeError(f"site.yml failed (exit {result.returncode}):\n{tail}")
        for old in site.state_dir.glob("provisioned-*"):
            old.unlink()
        os.makedirs(site.state_dir, exist_ok=True)
        stamp.write_text("ok\n")
        return result
