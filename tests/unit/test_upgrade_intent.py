"""The upgrade's intent record as `platform status` reads it, and the file
name shared by the role (which writes it) and the toolkit (which reads it)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from moodleops import REPO_ROOT
from moodleops.platform.upgrade_intent import INTENT_FILE, interrupted_line, interrupted_upgrade


def test_the_role_writes_where_status_reads() -> None:
    defaults = yaml.safe_load((REPO_ROOT / "playbooks/roles/moodle/defaults/main.yml").read_text())
    assert defaults["moodle_upgrade_intent"] == "{{ moodleops_state_dir }}/" + INTENT_FILE


def test_no_record_no_interrupted_run(tmp_path: Path) -> None:
    assert interrupted_upgrade(tmp_path) is None


def test_a_record_names_the_run_and_the_way_out(tmp_path: Path) -> None:
    (tmp_path / INTENT_FILE).write_text(json.dumps(
        {"run": {"id": "20261204T230000Z", "operator": "jdupont", "from": "4.1.9 (2022112809)",
                 "to": "4.1.11 (2022112811)"}, "before": {}, "phase": "switch"}))
    run = interrupted_upgrade(tmp_path)
    assert run == {"id": "20261204T230000Z", "operator": "jdupont", "from": "4.1.9 (2022112809)",
                   "to": "4.1.11 (2022112811)", "phase": "switch"}
    line = interrupted_line(run)
    assert "interrupted after the code switch" in line and "platform upgrade --recover" in line


def test_a_damaged_record_still_says_a_run_was_interrupted(tmp_path: Path) -> None:
    (tmp_path / INTENT_FILE).write_text('{"run": {"id": "2026')       # cut short by a full disk
    run = interrupted_upgrade(tmp_path)
    assert run is not None and "unreadable" in interrupted_line(run)
