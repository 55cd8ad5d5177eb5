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

from moodleops.errors import MoodleCliError
from moodleops.site import Site

JSON_MARKER = "MOODLEOPS-JSON: "
_CHECK = "the PHP error in this line, then the Moodle install: moodle_current_link and its config.php"


class MoodleError(MoodleCliError):
    """Moodle's PHP CLI is missing, failed, or answered something that is not its answer."""

    def __init__(self, message: str, *, address: str = "", check: str = _CHECK) -> None:
        super().__init__(address, message, check)


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
        proc = self._spawn(argv, stdin, timeout)
        if check and proc.returncode != 0:
            raise MoodleError(f"{script} {' '.join(args)} exited {proc.returncode}: "
                              f"{(proc.stderr or proc.stdout).strip()[-2000:]}", address=self.site.php)
        return proc

    def _spawn(self, argv: list[str], stdin: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
        self.site.require_here()
        if not os.path.exists(self.site.php):
            # Checked here: run through runuser, a missing binary is only runuser's exit 1.
            raise MoodleError(f"{self.site.php} does not exist", address=self.site.php,
                              check="php_version of the inventory and that php-cli is installed on this node")
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except FileNotFoundError:
            raise MoodleError(f"{self.site.php} does not exist", address=self.site.php,
                              check="php_version of the inventory and that php-cli is installed on this "
                                    "node") from None
        except PermissionError:
            raise MoodleError(f"{self.site.php} cannot be run (permission denied)", address=self.site.php,
                              check="the mode of the PHP binary") from None
        except subprocess.TimeoutExpired:
            raise MoodleError(f"{' '.join(argv[-3:])[:200]} did not finish within {timeout:g} s",
                              address=self.site.php, check="the database and the load of the web node; "
                                                           "the command can be re-run") from None

    def tool(self, name: str, *args: str, payload: Any = None, timeout: float = 900) -> Any:
        """Run a moodleops PHP helper with config.php as first argument and
        `payload` as JSON on stdin; return its JSON answer (the last line
        starting with MOODLEOPS-JSON:). `name` is a helper installed by the
        playbooks (<lib_dir>/php/<name>.php) or a path to any PHP file the
        web user can read (test fixtures)."""
        script = name if "/" in name else str(self.site.lib_dir / "php" / f"{name}.php")
        argv = self._as_web_user([self.site.php, script, str(self.site.config_php), *args])
        stdin = json.dumps(payload) if payload is not None else None
        proc = self._spawn(argv, stdin, timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_MARKER)]
        label = name if "/" not in name else os.path.basename(name)
        label = label if label.endswith(".php") else f"{label}.php"
        if proc.returncode != 0 or not lines:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
            why = "exited" if proc.returncode != 0 else "gave no answer line, exited"
            raise MoodleError(f"{label} {why} {proc.returncode}: {detail or '(no output)'}", address=self.site.php)
        try:
            return json.loads(lines[-1][len(JSON_MARKER):])
        except ValueError:
            raise MoodleError(f"{label} answered garbage: {lines[-1][:200]!r}", address=self.site.php,
                              check="what else prints on stdout when Moodle boots: config.php, plugins' "
                                    "debugging output") from None

    def probe(self, *settings: str) -> dict[str, Any]:
        """What Moodle itself reports: installed, versions (core and add-ons,
        from its database), maintenance, cron, and whether named settings are set."""
        result: dict[str, Any] = self.tool("probe", *settings)
        return result
