"""The demo's report: a summary table and a chart of answered calls per second per server,
as one self-contained HTML file (the chart is inline SVG: no plotting stack to install,
and the same SVG can go into a README)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


@dataclass(frozen=True)
class Marker:
    t: float
    label: str


def per_second(times: Sequence[float], seconds: int) -> list[int]:
    buckets = [0] * max(1, seconds)
    for t in times:
        i = int(t)
        if 0 <= i < len(buckets):
            buckets[i] += 1
    return buckets


def moving_average(values: Sequence[float], window: int = 3) -> list[float]:
    """Centred, ``window`` points (shorter at the ends): at 5 calls/s shared by two
    servers each one answers 2 or 3 in a given second; the average shows the level."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def chart_svg(
    series: dict[str, list[int]], markers: Sequence[Marker], title: str,
    width: int = 760, height: int = 300, smooth: int = 3,
) -> str:  # fmt: skip
    """Lines of ``series`` (a ``smooth``-second moving average), the markers as dashed
    lines with their labels stacked in a band above the plot (never on the lines or on
    each other). The SVG scales to its container (width 100%, the aspect kept)."""
    marker_rows = min(len(markers), 4)
    left, right, top, bottom = 45, 15, 34 + 14 * marker_rows, 40
    height += 14 * marker_rows
    shown = {k: moving_average(v, smooth) if smooth > 1 else [float(x) for x in v]
             for k, v in series.items()}  # fmt: skip
    n = max(len(v) for v in series.values())
    peak = max([1, *(int(max(v)) + (max(v) % 1 > 0) for v in shown.values() if v)])
    w, h = width - left - right, height - top - bottom

    def x(i: float) -> float:
        return left + w * i / max(1, n)

    def y(v: float) -> float:
        return top + h - h * v / peak

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" '
        f'style="max-width:{width}px;height:auto" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#333"/>',
    ]
    for v in range(0, peak + 1, max(1, peak // 5)):
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + w}" y2="{y(v):.1f}" '
                   'stroke="#eee"/>')  # fmt: skip
    for s in range(0, n + 1, max(1, n // 10)):
        out.append(f'<text x="{x(s):.1f}" y="{top + h + 15}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">'
               "seconds since start</text>")  # fmt: skip
    out.append(f'<text x="12" y="{top + h / 2}" transform="rotate(-90 12 {top + h / 2})" '
               'text-anchor="middle">calls answered / s'
               f"{f' ({smooth} s average)' if smooth > 1 else ''}</text>")  # fmt: skip
    # labels in rows above the plot, each joined to its dashed line by a thin tick; a row
    # is reused only when the previous label on it ends before this one starts
    row_end = [-1e9] * max(1, marker_rows)
    for m in sorted(markers, key=lambda m: m.t):
        mx = x(m.t)
        text_w = 6.2 * len(m.label)
        row = next((r for r, end in enumerate(row_end) if end < mx - 2), None)
        if row is None:
            row = min(range(len(row_end)), key=lambda r: row_end[r])
        anchor_x = min(mx, left + w - text_w)
        row_end[row] = anchor_x + text_w
        ly = 30 + 14 * row
        out.append(f'<line x1="{mx:.1f}" y1="{ly + 3}" x2="{mx:.1f}" y2="{top + h}" '
                   'stroke="#c00" stroke-dasharray="4 3"/>')  # fmt: skip
        out.append(f'<text x="{anchor_x:.1f}" y="{ly}" fill="#c00">'
                   f"{html.escape(m.label)}</text>")  # fmt: skip
    # the legend, right-aligned on the title line; ~6.5 px per character at 11 px
    lx = left + w - sum(24 + 6.5 * len(name) for name in series)
    for j, (name, values) in enumerate(shown.items()):
        pts = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(values))
        colour = PALETTE[j % len(PALETTE)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<rect x="{lx:.1f}" y="9" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14:.1f}" y="18">{html.escape(name)}</text>')
        lx += 24 + 6.5 * len(name)
    out.append("</svg>")
    return "\n".join(out)


def html_report(title: str, rows: Sequence[tuple[str, str]], svg: str, events: Sequence[str],
                verdict: str) -> str:  # fmt: skip
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    timeline = "\n".join(f"<li>{html.escape(e)}</li>" for e in events)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f4f4f4; font-weight: normal; }}
.verdict {{ font-size: 1.2em; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="verdict">{html.escape(verdict)}</p>
{svg}
<table>{table}</table>
<h2>What happened</h2>
<ol>{timeline}</ol>
</body></html>
"""
