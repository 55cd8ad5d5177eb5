"""The roles on separate hosts, over SSH: PostgreSQL on db1 admits the web and
monitoring hosts and nobody else; moodledata is served by data1 and the same
files are seen from both web nodes and the monitoring host. (Its second run
is the platform's, checked in test_platform_demo.)"""

from __future__ import annotations

import os
import subprocess

import pytest

from .rehearsal_run import SPEC, Platform, on, psql


def _psql(host: str) -> subprocess.CompletedProcess[str]:
    return psql(host, "select inet_client_addr()", user="moodle", password="db_password",
                db_host=SPEC.host("db1").address)


@pytest.mark.parametrize("client", ["web1", "web2", "mon1"])
def test_database_admits_the_platform_hosts(platform: Platform, client: str) -> None:
    proc = _psql(client)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SPEC.host(client).address


def test_database_refuses_other_hosts(platform: Platform) -> None:
    proc = _psql("gen1")
    assert proc.returncode != 0
    assert f'no pg_hba.conf entry for host "{SPEC.host("gen1").address}"' in proc.stderr


def test_moodledata_is_one_filesystem_for_the_web_and_monitoring_hosts(
        platform: Platform) -> None:
    token = os.urandom(8).hex()
    wrote = on("web1", f"sudo -u www-data sh -c 'mkdir -p /srv/moodledata/t && echo {token} > "
                       f"/srv/moodledata/t/{token}'")
    assert wrote.returncode == 0, wrote.stderr
    for host in ("web2", "mon1"):
        proc = on(host, f"findmnt -no FSTYPE /srv/moodledata; sudo cat /srv/moodledata/t/{token}")
        assert proc.stdout.split() == ["fuse.sshfs", token], (host, proc.stdout, proc.stderr)
    # On data1 it is a plain directory, the file owned by the web user as on a local disk.
    proc = on("data1", f"sudo findmnt -no FSTYPE -T /srv/moodledata/t/{token}; sudo stat -c %U /srv/moodledata/t/{token}")
    assert proc.stdout.split()[1:] == ["www-data"] and proc.stdout.split()[0] != "fuse.sshfs", proc.stdout
    on("web1", "sudo -u www-data rm -rf /srv/moodledata/t")


def test_moodledata_is_sftp_only_and_for_the_clients_only(platform: Platform) -> None:
    data1 = SPEC.host("data1").address
    # A client's key gives SFTP, no shell.
    shell = on("web1", f"sudo ssh -i /root/.ssh/moodledata_ed25519 -o BatchMode=yes www-data@{data1} id")
    assert "uid=" not in shell.stdout
    # gen1 is no client: it has no key authorised there.
    assert on("gen1", "test -e /root/.ssh/moodledata_ed25519 || echo none").stdout.strip() in ("none", "")
    keys = on("data1", "sudo cat /etc/ssh/moodledata_authorized_keys").stdout
    assert sorted(line.split()[-1] for line in keys.splitlines()) == \
        ["moodledata@mon1", "moodledata@web1", "moodledata@web2"]
