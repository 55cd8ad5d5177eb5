"""ut-moodle-ops: operations toolkit for the UT paramedical-schools Moodle platform."""

from pathlib import Path

#: Repository root (the checkout this package runs from).
REPO_ROOT = Path(__file__).resolve().parent.parent
