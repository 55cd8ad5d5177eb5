"""A small inline-SVG chart of a storage history and its forecast: no plotting
library needed, and the report stays one self-contained HTML file."""

from __future__ import annotations

from datetime import UTC, date, datetime
from html import escape

from moodleops.capacity.forecast import Projection
from moodleops.capacity.history import Series

W, H = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 40


def _day(t: float) -> float:
    return t / 86400.0


def storage_chart(history: Series, projection: Projection | None, threshold: float,
                  title: str = "") -> str:
    xs_hist = [_day(t) for t in history.times]
    ys_hist = list(history.values / 1e9)
    xs_fc: list[float] = []
    if projection is not None:
        xs_fc = [_day(datetime(d.year, d.month, d.day, 12, tzinfo=UTC).timestamp()) for d in projection.days]
    x_min = min(xs_hist)
    x_max = max(xs_hist + xs_fc)
    y_vals = ys_hist + [threshold / 1e9]
    if projection is not None:
        y_vals += list(projection.high / 1e9) + list(projection.low / 1e9)
    y_min, y_max = 0.0, max(y_vals) * 1.08 or 1.0
    span_x = max(x_max - x_min, 1.0)

    def px(x: float) -> float:
        return LEFT + (x - x_min) / span_x * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return TOP + (1 - (y - y_min) / (y_max - y_min)) * (H - TOP - BOTTOM)

    def path(xs: list[float], ys: list[float]) -> str:
        return " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             f'role="img" aria-label="{escape(title or history.name)}" font-family="sans-serif" font-size="11">')]
    # Axes and grid: five horizontal lines, a label per academic-year start.
    for i in range(6):
        y = y_min + (y_max - y_min) * i / 5
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f} GB</text>')
    first = datetime.fromtimestamp(x_min * 86400, UTC).date()
    last = datetime.fromtimestamp(x_max * 86400, UTC).date()
    for year in range(first.year, last.year + 1):
        tick = date(year, 1, 1)
        if first <= tick <= last:
            x = px(datetime(year, 1, 1, tzinfo=UTC).timestamp() / 86400)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{year}</text>')
    if projection is not None:
        band = path(xs_fc, list(projection.high / 1e9)) + " " + path(xs_fc[::-1], list(projection.low[::-1] / 1e9))
        parts.append(f'<polygon class="band" points="{band}" fill="#9ecae1" fill-opacity="0.45" stroke="none"/>')
        parts.append(f'<polyline class="forecast" points="{path(xs_fc, list(projection.mean / 1e9))}" '
                     'fill="none" stroke="#3182bd" stroke-dasharray="6 4" stroke-width="2"/>')
    parts.append(f'<polyline class="history" points="{path(xs_hist, ys_hist)}" fill="none" '
                 'stroke="#08306b" stroke-width="2"/>')
    ty = py(threshold / 1e9)
    parts.append(f'<line class="threshold" x1="{LEFT}" x2="{W - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
                 'stroke="#cb181d" stroke-width="1.5"/>')
    parts.append(f'<text x="{W - RIGHT - 4}" y="{ty - 5:.1f}" text-anchor="end" fill="#cb181d">'
                 f'alert {threshold / 1e9:g} GB</text>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#333"/>')
    parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#333"/>')
    legend = "history (solid), forecast (dashed) with its band (shaded)" if projection else "history"
    parts.append(f'<text x="{LEFT}" y="{H - 6}">{escape(legend)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
