"""Demonstration 5 of #13 and the rest of 2: the monitoring role on mon1, a
host of its own. Prometheus there scrapes node-exporter on every host of the
rehearsal (role node_exporter) and db2's replication lag; the storage
exporter on mon1 walks moodledata over the network filesystem (sshfs from
data1) and reads Moodle's tables on the replica, not the primary
(moodle_db_read_host); a school's alert is mailed by mon1's Alertmanager to
that school's referents only. Everything of mon1 listens on its loopback, as
in production, so it is read over SSH (docs/rehearsal.md)."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from moodleops import REPO_ROOT

from .rehearsal_run import INV, Platform, on

MON = "mon1"


def prometheus(query: str) -> list[dict[str, Any]]:
    got = on(MON, f"curl -sf --max-time 10 -G --data-urlencode {shlex.quote('query=' + query)} "
                  "http://127.0.0.1:9090/api/v1/query")
    assert got.returncode == 0, f"Prometheus on {MON} did not answer {query!r}: {got.stderr.strip()}"
    answer = json.loads(got.stdout)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def until(what: Callable[[], Any], seconds: float, step: float = 3) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def storage_metrics() -> dict[str, float]:
    """The storage exporter's unlabelled samples, read on mon1's loopback."""
    got = on(MON, "curl -sf --max-time 10 http://127.0.0.1:9852/metrics")
    assert got.returncode == 0, f"the storage exporter on {MON} did not answer: {got.stderr.strip()}"
    return {line.split()[0]: float(line.split()[1]) for line in got.stdout.splitlines()
            if line.startswith("moodle_storage_") and "{" not in line.split()[0]}


def test_prometheus_on_mon1_scrapes_every_host(platform: Platform) -> None:
    hosts = {h.name for h in INV.hosts}
    up: dict[str, str] = {}

    def all_up() -> bool:
        up.clear()
        up.update({r["metric"]["node"]: r["value"][1] for r in prometheus('up{job="node"}')})
        return set(up) == hosts and set(up.values()) == {"1"}

    assert until(all_up, 90), f"node-exporter targets on {MON}: {up} (expected every one of {sorted(hosts)} up)"
    # Each host's own metrics, not mon1's answered nine times.
    names = {r["metric"]["node"]: r["metric"]["nodename"] for r in prometheus("node_uname_info")}
    assert set(names) == hosts and len(set(names.values())) == len(hosts), names


def test_replica_lag_reaches_prometheus(platform: Platform) -> None:
    streaming = until(lambda: prometheus('postgresql_replica_streaming{node="db2"} == 1'), 90)
    assert streaming, "Prometheus on mon1 has no postgresql_replica_streaming == 1 from db2"
    lag = prometheus('postgresql_replica_replay_lag_bytes{node="db2"}')
    assert lag and 0 <= float(lag[0]["value"][1]) < 64 * 1024 * 1024, lag


def replica_files_scans() -> int:
    got = on("db2", "sudo -u postgres psql -d moodle -tAc "
                    "\"select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) from pg_stat_user_tables "
                    "where relname = 'mdl_files'\"")
    assert got.returncode == 0, got.stderr
    return int(got.stdout.strip() or 0)


def test_storage_exporter_walks_moodledata_over_sshfs_and_reads_the_replica(platform: Platform) -> None:
    before = replica_files_scans()
    started = time.time()
    assert on(MON, "sudo supervisorctl restart moodleops-storage-exporter").returncode == 0
    metrics: dict[str, float] = {}

    def walked() -> bool:
        metrics.clear()
        metrics.update(storage_metrics())
        return (metrics.get("moodle_storage_db_scan_timestamp_seconds", 0) >= started - 1
                and metrics.get("moodle_storage_filedir_last_walk_timestamp_seconds", 0) >= started - 1)

    assert until(walked, 240, step=5), f"no scan and walk since the restart: {metrics}"
    # The walk went through the mount: it found what data1 itself holds.
    on_data1 = on("data1", "sudo find /srv/moodledata/filedir -type f -regextype posix-extended "
                           "-regex '.*/[0-9a-f]{40}' | wc -l")
    assert on_data1.returncode == 0, on_data1.stderr
    assert metrics["moodle_storage_filedir_blobs"] == int(on_data1.stdout) > 0, (metrics, on_data1.stdout)
    assert metrics["moodle_storage_filedir_walk_errors"] == 0, metrics
    # Its scan of Moodle's files table ran on db2 (a replica counts its own reads).
    assert replica_files_scans() > before, "the storage exporter's scan did not read the replica"
    assert metrics["moodle_storage_distinct_blobs"] > 0, metrics


# The relay of the rehearsal's inventory (monitoring_smtp_smarthost, 127.0.0.1:25
# on mon1): a sink recording who each message is for, stopping by itself.
SMTP_SINK = """\
import asyncore, json, smtpd, sys
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        with open(sys.argv[1], "a") as out:
            out.write(json.dumps({"from": mailfrom, "to": rcpttos, "body": data.decode("utf-8", "replace")}) + "\\n")
Sink(("127.0.0.1", 25), None)
asyncore.loop(timeout=1)
"""


def school_rule_labels() -> dict[str, str]:
    """The labels of the real school storage alert (exporters/rules/storage.yml)."""
    groups = yaml.safe_load((REPO_ROOT / "exporters/rules/storage.yml").read_text(encoding="utf-8"))["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "MoodleSchoolStorageAboveThreshold")
    return {"alertname": rule["alert"], **rule["labels"]}


def test_a_school_alert_reaches_that_schools_referents_only(platform: Platform) -> None:
    school = INV.schools[2]
    mails = "/tmp/moodleops-smtp-sink.jsonl"
    assert on(MON, "cat > /tmp/moodleops-smtp-sink.py", SMTP_SINK).returncode == 0
    started = on(MON, f"sudo rm -f {mails}; sudo sh -c 'nohup timeout 300 python3 -W ignore "
                      f"/tmp/moodleops-smtp-sink.py {mails} > /tmp/moodleops-smtp-sink.log 2>&1 &'")
    assert started.returncode == 0, started.stderr
    listening = until(lambda: on(MON, "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 25), 1)\""
                                  ).returncode == 0, 20, step=1)
    assert listening, on(MON, "cat /tmp/moodleops-smtp-sink.log").stdout
    # As Prometheus would send it when the rule fires (its `for: 1h` is not waited for here).
    ends = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    alert = [{"labels": {**school_rule_labels(), "school": school.code, "bucket": "school",
                         "job": "moodle_storage", "instance": "rehearsal-test"},
              "annotations": {"summary": f"School {school.code} stores 42GB, above its alert threshold"},
              "endsAt": ends}]
    posted = on(MON, "curl -sf --max-time 10 -H 'Content-Type: application/json' --data-binary @- "
                     "http://127.0.0.1:9093/api/v2/alerts", json.dumps(alert))
    assert posted.returncode == 0, posted.stderr

    def relayed() -> list[dict[str, Any]]:
        got = on(MON, f"sudo cat {mails} 2>/dev/null")
        return [json.loads(line) for line in got.stdout.splitlines()]

    def for_the_school() -> list[dict[str, Any]]:
        return [m for m in relayed() if set(m["to"]) & set(school.referents)]

    # Alertmanager's group_wait (30 s) comes first.
    got = until(for_the_school, 120, step=5)
    everything = relayed()
    on(MON, "sudo pkill -f moodleops-smtp-sink.py")
    assert got, ("no mail for the school's alert reached the relay on mon1: "
                 + on(MON, "sudo tail -5 /var/log/prometheus/alertmanager.log 2>/dev/null").stdout)
    assert sorted(got[0]["to"]) == sorted(school.referents), got
    assert "MoodleSchoolStorageAboveThreshold" in got[0]["body"] and school.code in got[0]["body"]
    # Neither another school's referents nor the sysadmins get it (the school's route does not continue).
    assert not [m for m in everything if school.code in m["body"] and set(m["to"]) - set(school.referents)]
