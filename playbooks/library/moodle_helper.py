#!/usr/bin/python
# GNU General Public License v3.0+
"""Ansible module: run one moodleops PHP helper and return its answer."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moodle_helper
short_description: Run a moodleops PHP helper (moodleops/php/) and return its JSON answer
description:
  - The playbooks' side of the helpers' protocol (moodleops/php/_bootstrap.php), the same
    one moodleops.moodle.MoodleCLI.tool speaks for the commands - the helper
    gets config.php as first argument and the payload as JSON on stdin; its answer is the
    last stdout line starting with "MOODLEOPS-JSON: ".
  - Run it as the web user (become_user) so that Moodle's files and caches stay right.
  - A read_only helper also runs in check mode and never reports a change. Otherwise, in
    check mode the helper runs with check_mode_args (e.g. --dry-run), or not at all.
options:
  helper: {description: "Helper name (<lib_dir>/php/<helper>.php) or an absolute path.", required: true, type: str}
  lib_dir: {description: Where the playbooks installed the helpers., type: path, default: /usr/local/lib/moodleops}
  config: {description: "Moodle's config.php.", required: true, type: path}
  php: {description: PHP CLI binary., type: str, default: php}
  args: {description: Extra arguments after config.php., type: list, elements: str, default: []}
  payload: {description: Sent as JSON on stdin (none when omitted)., type: raw}
  read_only: {description: The helper changes nothing., type: bool, default: false}
  changed_key: {description: "Answer key whose non-empty value means the helper changed something.", type: str}
  check_mode_args: {description: Arguments added in check mode (the helper's dry run)., type: list, elements: str}
  timeout: {description: Seconds before the helper is killed., type: int, default: 900}
"""

RETURN = r"""
answer: {description: The helper's JSON answer., type: raw, returned: success}
"""

import json
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

MARKER = "MOODLEOPS-JSON: "


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "helper": {"type": "str", "required": True},
            "lib_dir": {"type": "path", "default": "/usr/local/lib/moodleops"},
            "config": {"type": "path", "required": True},
            "php": {"type": "str", "default": "php"},
            "args": {"type": "list", "elements": "str", "default": []},
            "payload": {"type": "raw"},
            "read_only": {"type": "bool", "default": False},
            "changed_key": {"type": "str"},
            "check_mode_args": {"type": "list", "elements": "str"},
            "timeout": {"type": "int", "default": 900},
        },
        supports_check_mode=True,
    )
    p = module.params
    args = list(p["args"])
    if module.check_mode and not p["read_only"]:
        if p["check_mode_args"] is None:
            module.exit_json(changed=False, skipped=True, msg="check mode: this helper has no dry run")
        args += p["check_mode_args"]
    script = p["helper"] if os.path.isabs(p["helper"]) else os.path.join(p["lib_dir"], "php", p["helper"] + ".php")
    stdin = None if p["payload"] is None else json.dumps(p["payload"])
    try:
        proc = subprocess.run([p["php"], script, p["config"], *args], input=stdin, capture_output=True,
                              text=True, timeout=p["timeout"], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        module.fail_json(msg=f"{script}: {exc}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        module.fail_json(msg=f"{os.path.basename(script)} exited {proc.returncode}: {detail}", rc=proc.returncode)
    try:
        answer = json.loads(lines[-1][len(MARKER):])
    except ValueError as exc:
        module.fail_json(msg=f"{os.path.basename(script)}: its answer is not JSON ({exc})")
    changed = False
    if not p["read_only"] and p["changed_key"]:
        changed = bool(answer.get(p["changed_key"])) if isinstance(answer, dict) else False
    module.exit_json(changed=changed, answer=answer)


if __name__ == "__main__":
    main()
