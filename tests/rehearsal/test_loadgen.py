"""Demonstration 6 of #13: distributed Locust from the operator's side. The
fixture is made through Moodle on web1 (conftest's `load_fixture`);
`loadtest run --workers 2` starts the workers on gen1 and gen2 itself (the
toolkit role's virtualenv, with Locust, connected as Ansible connects), plays
the exam shape through lb1 and stops them; the summary has throughput and p95
per web node (lb1's X-Served-By), which `capacity sizing` reports."""

from __future__ import annotations

import json
from pathlib import Path

from moodleops.capacity import sizing
from moodleops.loadtests.ssh import REMOTE_DIR

from .conftest import LoadFixture
from .rehearsal_run import INV, Platform, moodleops, on


def run_exam(fx: LoadFixture, results: Path, duration_s: int) -> list[str]:
    return ["-i", INV.env, "loadtest", "run", "--prefix", fx.prefix, "--fixture-dir", str(fx.directory),
            "--shape", "exam", "--users", str(fx.users), "--duration", str(duration_s), "--workers", "2",
            "--results", str(results), "--quiet"]


def test_distributed_exam_through_lb1_with_figures_per_web_node(platform: Platform, load_fixture: LoadFixture,
                                                                tmp_path: Path) -> None:
    record = load_fixture.directory / f"{load_fixture.prefix}.json"
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert len(json.loads(record.read_text(encoding="utf-8"))["students"]) >= load_fixture.users
    before = moodleops("-i", INV.env, "loadtest", "inspect", "--prefix", load_fixture.prefix)
    assert before.returncode == 0, before.stderr
    results = tmp_path / "run"
    run = moodleops(*run_exam(load_fixture, results, 45))
    # The verdict may be any (one 2-core machine runs the nine hosts); Locust and SSH must not fail.
    assert run.returncode in (0, 1, 8), run.stdout + run.stderr
    after = moodleops("-i", INV.env, "loadtest", "inspect", "--prefix", load_fixture.prefix)
    assert after.returncode == 0, after.stderr
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    assert summary["load_generators"] == ["gen1", "gen2"]
    assert summary["locust_exit_code"] in (0, 1)
    # The takers' attempts reached Moodle, through either node.
    finished = json.loads(after.stdout)["quiz_attempts_finished"] - json.loads(before.stdout)["quiz_attempts_finished"]
    assert finished >= load_fixture.users // 2, after.stdout
    nodes = summary["steady"]["nodes"]
    assert set(nodes) == {"web1", "web2"}, nodes
    for name, figures in nodes.items():
        assert figures["requests"] > 0 and figures["p95_ms"] > 0 and figures["rps"] > 0, (name, figures)
    assert sum(f["requests"] for f in nodes.values()) == summary["steady"]["totals"]["requests"]
    # The workers left nothing on the load generators (plan with its password, pid files, processes).
    for gen in ("gen1", "gen2"):
        left = on(gen, f"ls -A {REMOTE_DIR} 2>/dev/null; pgrep -f 'moodleops[.]loadtests[.]worker' || true")
        assert left.stdout.strip() == "", (gen, left.stdout)
    # Sizing reads the per-node figures (lb1's header); php-fpm's status pages and the
    # database are not reachable from here (nginx serves them to mon1, pg_hba admits
    # the platform's hosts), so the workers are the inventory's per node that answered.
    load = sizing.read_any([results / "summary.json"], INV.settings.php_fpm_max_children)
    assert load.php_fpm_workers == 2 * INV.settings.php_fpm_max_children
    assert any("peak window per web node" in n and "web1 " in n and "web2 " in n for n in load.notes), load.notes
    cli = moodleops("-i", INV.env, "capacity", "sizing", "--loadtest", str(results / "summary.json"))
    # On one 2-core machine the rehearsal may be too slow for the target p95: sizing says so.
    assert cli.returncode == 0 and "web2" in cli.stdout or \
        cli.returncode != 0 and "the load test says the platform is already too slow" in cli.stderr, \
        cli.stdout + cli.stderr
