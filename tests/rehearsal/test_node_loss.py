"""Demonstration 8 of #13: a web node lost under load. While the exam shape
plays through lb1 (workers on gen1 and gen2), web2's container is killed:
lb1's health check takes it out, its retries send the connections web2 can
no longer take to web1, the errors stay bounded and are counted, and
`platform status` names the dead node."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from moodleops.loadtests.summary import read_requests

from moodleops import REPO_ROOT
from moodleops.rehearsal import lxc

from .conftest import LoadFixture
from .rehearsal_run import INV, SPEC, Platform, moodleops
from .test_loadgen import run_exam

# web2 stays down: the package's rehearsal is brought down after this module.
RUNS_LAST = True
RUN_S = 60
# lb1 marks a node down after haproxy_health_fall (2) failed checks every 2 s,
# plus a connect timeout: past this, no request may fail or reach web2.
TAKEN_OUT_WITHIN_S = 15


def test_losing_web2_under_load_is_bounded_counted_and_named(platform: Platform, load_fixture: LoadFixture,
                                                            tmp_path: Path) -> None:
    results = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "moodleops.cli", *run_exam(load_fixture, results, RUN_S)],
                           cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        # Once web2 has served some of the exam, it is lost (killed, not shut down).
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            _, samples = read_requests(results / "requests.csv")
            if sum(1 for s in samples if s.node == "web2") >= 10:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("web2 never served 10 requests of the run")
        subprocess.run(["lxc-stop", "-n", SPEC.host("web2").container, "-k"], check=True, timeout=60)
        lost_at = time.time()
        out, err = run.communicate(timeout=RUN_S * 3 + 120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert lxc.state(SPEC.host("web2").container) == "STOPPED"
    # A verdict, not a failure of the run itself (Locust, SSH).
    assert run.returncode in (0, 1, 8), out + err
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    _, samples = read_requests(results / "requests.csv")
    after = [s for s in samples if s.t >= lost_at + TAKEN_OUT_WITHIN_S]
    assert len(after) >= 20, f"only {len(after)} requests after web2 was taken out"
    assert {s.node for s in after if s.ok} == {"web1"}
    assert [s for s in after if not s.ok] == []
    # Counted: Locust's totals hold every failed request of requests.csv, and they are few.
    failed = sum(1 for s in samples if not s.ok)
    assert summary["totals"]["failures"] == failed
    assert failed <= 0.05 * len(samples), (failed, len(samples))
    status = moodleops("-i", INV.env, "platform", "status")
    assert status.returncode != 0
    assert "web node web2 is down" in status.stdout + status.stderr, status.stdout + status.stderr
    assert "Node     web1       OK" in status.stdout, status.stdout
