"""Demonstration 2 of #13, its first part: db2 becomes a PostgreSQL 15
streaming replica of db1 through the postgresql role (pg_basebackup over the
replication protocol, admitted by address), follows the primary's writes, and
exports its state and lag (node-exporter's textfile collector); the platform's
second run (test_platform_demo) changes nothing on either. Prometheus on mon1
scraping it and the exporters reading the replica: test_monitoring."""

from __future__ import annotations

import subprocess
import time
import uuid

import requests

from moodleops.rehearsal import ssh

from .rehearsal_run import SPEC, Platform


def sql(host: str, query: str) -> str:
    proc = subprocess.run(ssh.ssh_argv(SPEC, SPEC.host(host), f"sudo -u postgres psql -tAc \"{query}\""),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{host}: {proc.stderr.strip()}"
    return proc.stdout.strip()


def test_db2_streams_from_db1(platform: Platform) -> None:
    assert sql("db2", "select pg_is_in_recovery()") == "t"
    senders = sql("db1", "select client_addr, state from pg_stat_replication")
    assert senders == f"{SPEC.host('db2').address}|streaming", senders


def test_a_write_on_the_primary_reaches_the_replica(platform: Platform) -> None:
    # A database of the test's own (never a Moodle table), created and dropped on db1.
    name = f"rh_probe_{uuid.uuid4().hex[:8]}"
    sql("db1", f"create database {name}")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sql("db2", f"select count(*) from pg_database where datname='{name}'") != "1":
            time.sleep(1)
        assert sql("db2", f"select count(*) from pg_database where datname='{name}'") == "1"
    finally:
        sql("db1", f"drop database {name}")


def test_the_replica_exports_its_lag(platform: Platform) -> None:
    http = requests.Session()
    http.trust_env = False
    metrics: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = http.get(f"http://{SPEC.host('db2').address}:9100/metrics", timeout=10).text
        metrics = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                   if line.startswith("postgresql_replica_")}
        if metrics.get("postgresql_replica_streaming") == 1:
            break
        time.sleep(3)
    assert metrics.get("postgresql_replica_streaming") == 1, metrics
    assert 0 <= metrics["postgresql_replica_replay_lag_bytes"] < 64 * 1024 * 1024, metrics
