"""The intent record an upgrade run writes before it changes anything and
removes once it ended in a known state (playbooks/roles/moodle/tasks/
upgrade_apply.yml). Found on the first web node, it means a run was killed:
`platform status` says so, `platform upgrade --recover` finishes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The role's default moodle_upgrade_intent is "{{ moodleops_state_dir }}/" + this
# (tests/unit/test_upgrade_intent.py keeps the two together).
INTENT_FILE = "upgrade-intent.json"


def interrupted_upgrade(state_dir: Path) -> dict[str, Any] | None:
    """The killed run the record names (id, operator, from, to, phase), None without one."""
    path = state_dir / INTENT_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"id": "?", "operator": "?", "from": "?", "to": "?", "phase": "?",
                "unreadable": f"{path}: {getattr(exc, 'strerror', None) or exc}"}
    run = record.get("run", {}) if isinstance(record, dict) else {}
    return {"id": run.get("id", "?"), "operator": run.get("operator", "?"), "from": run.get("from", "?"),
            "to": run.get("to", "?"), "phase": record.get("phase", "?") if isinstance(record, dict) else "?"}


def interrupted_line(run: dict[str, Any]) -> str:
    where = "after" if run.get("phase") == "switch" else "before"
    unreadable = f" (intent record unreadable: {run['unreadable']})" if run.get("unreadable") else ""
    return (f"upgrade run {run['id']} (by {run['operator']}, {run['from']} -> {run['to']}) was interrupted {where} "
            f"the code switch{unreadable}: moodleops platform upgrade --recover (dry run), then --recover --apply")
