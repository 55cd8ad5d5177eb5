"""The rehearsal's durable record of what it made, written before each action
so that `down` (or the next `up`) can finish or undo a run killed half-way."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


@contextmanager
def exclusive(state_dir: Path, waiting: Callable[[str], None]) -> Iterator[None]:
    """One rehearsal command at a time on this machine (`prepare` in the
    background and `up` in the foreground would both write state.json and
    build the base). Waits; the kernel releases it when the holder dies."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir / "lock", "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            waiting(f"waiting for another rehearsal command to finish ({holder})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        yield


@dataclass
class State:
    network_started: bool = False          # lxc-net was started by the rehearsal: `down` stops it
    base_key: str = ""                     # the base container's content key (spec.base_key)
    base_complete: bool = False            # False while it is being built: a rebuild starts over
    containers: dict[str, str] = field(default_factory=dict)   # container -> base_key it was cloned from

    @classmethod
    def load(cls, state_dir: Path) -> State:
        path = state_dir / "state.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True), encoding="utf-8")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(state_dir / "state.json")
