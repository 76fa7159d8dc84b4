"""The monitoring page's pictures, drawn here as inline SVG: no chart library, nothing fetched.

`rate_chart`: a weekly rate (flag rate, agreement, not-applicable rate) as a line, with its
expected band shaded where there is one. `histogram_chart`: the window's score distribution in
the reference's ten decile bins, beside the reference's own shares.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 360, 150
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 22, 28
LINE = "#1f5fa8"
BAND = "#9cc3ea"
REFERENCE = "#c0392b"


def _y(value: float, top_value: float) -> float:
    inner = HEIGHT - TOP - BOTTOM
    return TOP + inner * (1 - min(value, top_value) / top_value) if top_value else TOP + inner


def _scale_top(values: Sequence[float]) -> float:
    """A round top for the y axis that holds every value (rates: at most 100%)."""
    highest = max([v for v in values if v is not None] + [0.0])
    for top in (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0):
        if highest <= top:
            return top
    return 1.0


def _frame(title: str, top_value: float, labels: Sequence[str], chart_id: str, description: str) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(description)}">',
        f"<title>{escape(description)}</title>",
        f'<text x="{LEFT}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = _y(top_value * fraction, top_value)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{top_value * fraction:.0%}</text>"
        )
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, len(labels) // 6)
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + step * (i + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - 10}" font-size="9" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    return parts


def rate_chart(
    *,
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    bands: Sequence[tuple[float, float] | None] = (),
    chart_id: str,
) -> SafeString:
    """One point per week (None: no results that week, a gap), the band shaded behind."""
    top_value = _scale_top([*[v for v in values if v is not None], *[b[1] for b in bands if b]])
    description = f"{title}: " + ", ".join(
        f"{label} {'-' if v is None else f'{v:.1%}'}" for label, v in zip(labels, values, strict=False)
    )
    parts = _frame(title, top_value, labels, chart_id, description)
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    for i, band in enumerate(bands):
        if band:
            x = LEFT + step * i
            y1, y2 = _y(band[1], top_value), _y(band[0], top_value)
            parts.append(
                f'<rect class="band" x="{x + 1:.1f}" y="{y1:.1f}" width="{step - 2:.1f}" '
                f'height="{max(y2 - y1, 1):.1f}" fill="{BAND}" opacity="0.6"/>'
            )
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, value in enumerate(values):
        if value is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        x, y = LEFT + step * (i + 0.5), _y(value, top_value)
        segment.append(f"{x:.1f},{y:.1f}")
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{LINE}"/>')
    if segment:
        segments.append(segment)
    for points in segments:
        if len(points) > 1:
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{LINE}" stroke-width="2"/>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it is escaped above


def histogram_chart(
    *, title: str, counts: Sequence[int], reference: Sequence[float], chart_id: str
) -> SafeString:
    """Bars: the window's share of scores per reference decile bin; red ticks: the reference's
    share (about 10% each by construction)."""
    total = sum(counts)
    shares = [c / total if total else 0.0 for c in counts]
    labels = [f"D{i + 1}" for i in range(len(counts))]
    top_value = _scale_top([*shares, *reference])
    description = f"{title}: " + ", ".join(
        f"{label} {share:.1%} (reference {ref:.1%})"
        for label, share, ref in zip(labels, shares, reference, strict=False)
    )
    parts = _frame(title, top_value, labels, chart_id, description)
    step = (WIDTH - LEFT - RIGHT) / max(len(counts), 1)
    for i, share in enumerate(shares):
        x, y = LEFT + step * i, _y(share, top_value)
        parts.append(
            f'<rect class="bar" x="{x + 2:.1f}" y="{y:.1f}" width="{step - 4:.1f}" '
            f'height="{HEIGHT - BOTTOM - y:.1f}" fill="{LINE}"/>'
        )
    for i, ref in enumerate(reference):
        x, y = LEFT + step * i, _y(ref, top_value)
        parts.append(
            f'<line class="reference" x1="{x + 1:.1f}" y1="{y:.1f}" x2="{x + step - 1:.1f}" y2="{y:.1f}" '
            f'stroke="{REFERENCE}" stroke-width="3"/>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it is escaped above
