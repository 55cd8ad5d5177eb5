"""Compare the inventory's pins with an offline artifact mirror."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from moodleops.inventory.model import Inventory, Pin


def check_mirror(inv: Inventory, mirror_dir: Path) -> list[str]:
    """Problems between the pins and `mirror_dir`, one line each; [] when all match.

    Lines starting with "note:" are informational (the mirror's MANIFEST.json
    knows something the inventory does not pin, or lists it differently); the
    others mean a playbook would refuse to install from this mirror.
    """
    mirror_dir = Path(mirror_dir)
    if not mirror_dir.is_dir():
        return [f"the mirror {mirror_dir} is not a directory"]
    pins = (inv.core, *inv.plugins)
    problems = [line for pin in pins if (line := _check_file(pin, mirror_dir))]
    return problems + _manifest_lines(pins, mirror_dir)


def sha256_of(path: Path) -> str:
    # Streams: the core archive is tens of MB and must not be read whole.
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_file(pin: Pin, mirror_dir: Path) -> str:
    path = mirror_dir / pin.file
    if not path.is_file():
        return f"{pin.component}: {pin.file} is not in the mirror {mirror_dir}"
    actual = sha256_of(path)
    if actual != pin.sha256:
        return f"{pin.component}: {pin.file} has sha256 {actual}, the inventory pins {pin.sha256}"
    return ""


def _manifest_lines(pins: tuple[Pin, ...], mirror_dir: Path) -> list[str]:
    path = mirror_dir / "MANIFEST.json"
    if not path.is_file():
        return [f"note: the mirror {mirror_dir} has no MANIFEST.json; only the pinned files were checked"]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        listed = {str(e["component"]): e for e in entries}
    except (ValueError, TypeError, KeyError) as exc:
        # The playbooks and people read the manifest too: a broken one is a real problem.
        return [f"{path} is not a list of components with files: {exc}"]
    pinned = {pin.component: pin for pin in pins}
    lines = []
    for component, entry in listed.items():
        pin = pinned.get(component)
        if pin is None:
            lines.append(f"note: {component}: {entry.get('file')} is in the mirror's MANIFEST.json "
                         "but the inventory does not pin it")
        elif (entry.get("file"), entry.get("sha256")) != (pin.file, pin.sha256):
            lines.append(f"note: {component}: the mirror's MANIFEST.json lists {entry.get('file')} "
                         f"(sha256 {entry.get('sha256')}), the inventory pins {pin.file}")
    return lines
