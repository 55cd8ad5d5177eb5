"""Progress of long transfers (moodleops.console: a bar on a terminal, a line a
second on stderr otherwise) and the human sizes/durations used in reports."""

from __future__ import annotations

from moodleops.console import Transfer
from moodleops.units import format_bytes


def human_bytes(n: float) -> str:
    # The toolkit's one byte formatter: decimal units, as the agreement counts them.
    return format_bytes(n)


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# Long transfers show progress through the toolkit's one progress display.
Progress = Transfer
