"""Sizing from a load-test summary, with numbers worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capacity_conftest_helpers import run_cli
from moodleops.capacity import sizing
from moodleops.capacity.errors import CapacityError

SUMMARY = Path(__file__).parent / "data" / "loadtest-summary.json"


def test_sizing_worked_example(local_inventory, params) -> None:
    assert sum(s.students + s.trainers for s in local_inventory.schools) == 4185
    s = sizing.size(local_inventory, sizing.read_summary(SUMMARY), params.sizing)
    assert s.population == 4395                 # ceil(4185 x 1.05)
    assert s.peak_users == 879                  # ceil(4395 x 0.20)
    assert s.demand_rps == pytest.approx(58.6)  # 879 x 4 / 60
    assert s.workers_for_throughput == 28       # ceil(58.6 / (3.0 x 0.70))
    assert s.users_per_worker == 10             # p95 <= 1500 ms up to 80 users on 8 workers
    assert s.workers_for_latency == 88          # ceil(879 / 10)
    assert s.workers == 115                     # ceil(88 x 1.30)
    assert (s.workers_per_node, s.node_limit) == (32, "cpu")   # 8 cores x 4; memory allows 112
    assert s.web_nodes == 4                     # ceil(115 / 32)
    assert s.db_max_connections == 193          # ceil((4 x 32 + 20) x 1.30)
    assert s.db_ram_mb == 24576                 # ((9536.7/0.75 + 193x16 + 2048) x 1.3) up to 4 GB steps
    assert s.db_shared_buffers_mb == 6144


def test_cli_states_the_headroom(tmp_path: Path) -> None:
    code, out, err = run_cli("capacity", "sizing", "--loadtest", str(SUMMARY))
    assert code == 0, err
    assert "+ 30% headroom = 115" in out and "web nodes:       4 x" in out and "max_connections 193" in out
    code, out, _ = run_cli("capacity", "sizing", "--loadtest", str(SUMMARY), "--format", "json")
    assert json.loads(out)["web_nodes"] == 4


def test_a_test_that_never_reached_the_target_is_a_lower_bound(local_inventory, params, tmp_path: Path) -> None:
    doc = json.loads(SUMMARY.read_text())
    doc["p95_by_users"] = [{"users": 20, "p95_ms": 200}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    s = sizing.size(local_inventory, sizing.read_summary(path), params.sizing)
    assert s.users_per_worker_is_lower_bound and "lower bound" in s.notes[0]


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": "x"}, "schema 'x' is not valid"),
    ({"php_fpm_workers": 0}, "php_fpm_workers 0 is not valid"),
    ({"throughput_rps_per_worker": "fast"}, "throughput_rps_per_worker 'fast' is not valid"),
    ({"p95_by_users": []}, "p95_by_users .* is not valid"),
    ({"p95_by_users": [{"users": 10, "p95_ms": 9000}]}, "no measured point keeps p95 <= 1500 ms"),
])
def test_bad_summaries_are_refused(local_inventory, params, tmp_path: Path, change, message) -> None:
    doc = {**json.loads(SUMMARY.read_text()), **change}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CapacityError, match=message):
        sizing.size(local_inventory, sizing.read_summary(path), params.sizing)
