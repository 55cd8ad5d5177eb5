"""The upgrade tests' start point: the releases of ../shared/artifacts/older
(Moodle 4.1.0 and older plugin releases), read from that folder's
MANIFEST.json and laid over the inventory's pins; and one mirror directory
holding both sets, for MOODLEOPS_ARTIFACTS."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from beside_stack import SHARED

OLDER = SHARED / "older"


def older_pins(pins: dict[str, Any], only: Iterable[str] | None = None) -> dict[str, Any]:
    """`pins` (moodle.yml's structure) with every component of older/MANIFEST.json,
    or `only` those, at its older release."""
    wanted = None if only is None else set(only)
    for entry in json.loads((OLDER / "MANIFEST.json").read_text(encoding="utf-8")):
        if wanted is not None and entry["component"] not in wanted:
            continue
        fields = {"file": entry["file"], "sha256": entry["sha256"], "version": str(entry["version"])}
        if entry["component"] == "core":
            pins["core"].update(fields, release=entry["release"])
        for pin in pins["plugins"]:
            if pin["component"] == entry["component"]:
                pin.update(fields)
    return pins


def both_mirrors(dest: Path) -> Path:
    """`dest` filled with links to every archive, pinned and older."""
    for src in [*SHARED.glob("*.zip"), *SHARED.glob("*.tgz"), *OLDER.glob("*.zip"), *OLDER.glob("*.tgz")]:
        (dest / src.name).symlink_to(src)
    return dest
