"""The wheel (what a monitoring host installs) holds every package the CLI
imports: a package missing from pyproject's list breaks the lean host's
`moodleops` at start-up, for every area."""

from __future__ import annotations

import tomllib

from moodleops import REPO_ROOT


def test_every_python_package_of_the_tree_is_in_the_wheel() -> None:
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = {v: k for k, v in tool["package-dir"].items()}
    found = set()
    for top, name in dirs.items():
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
