"""Acting on Moodle through Moodle: its admin/cli scripts and the moodleops PHP
helpers (moodleops/php/, installed by the playbooks into <lib_dir>/php/), run
as the web user so that files, caches and events stay right.

Runs on the web node itself (the local stack, or a web node of production
where the toolkit is checked out); remote orchestration goes through the
playbooks and pyinfra deploys."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moodleops.site import Site

JSON_MARKER = "MOODLEOPS-JSON: "


class MoodleError(RuntimeError):
    pass


@dataclass(frozen=True)
class MoodleCLI:
    site: Site

    def _as_web_user(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.site.web_user, "--", *argv]
        return list(argv)

    def run(self, script: str, *args: str, stdin: str | None = None, timeout: float = 900,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Moodle CLI script (path relative to the Moodle root, e.g.
        admin/cli/maintenance.php) as the web user."""
        argv = self._as_web_user([self.site.php, str(self.site.current_link / script), *args])
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise MoodleError(f"{script} {' '.join(args)} exited {proc.returncode}: "
                              f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def tool(self, name: str, *args: str, payload: Any = None, timeout: float = 900) -> Any:
        """Run a moodleops PHP helper with config.php as first argument and
        `payload` as JSON on stdin; return its JSON answer (the last line
        starting with MOODLEOPS-JSON:). `name` is a helper installed by the
        playbooks (<lib_dir>/php/<name>.php) or a path to any PHP file the
        web user can read (test fixtures)."""
        script = name if "/" in name else str(self.site.lib_dir / "php" / f"{name}.php")
        argv = self._as_web_user([self.site.php, script, str(self.site.config_php), *args])
        stdin = json.dumps(payload) if payload is not None else None
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_MARKER)]
        if proc.returncode != 0 or not lines:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
            raise MoodleError(f"{name}.php exited {proc.returncode}: {detail}")
        return json.loads(lines[-1][len(JSON_MARKER):])

    def probe(self, *settings: str) -> dict[str, Any]:
        """What Moodle itself reports: installed, versions (core and add-ons,
        from its database), maintenance, cron, and whether named settings are set."""
        result: dict[str, Any] = self.tool("probe", *settings)
        return result
