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


def chart_svg(
    series: dict[str, list[int]], markers: Sequence[Marker], title: str,
    width: int = 760, height: int = 300,
) -> str:  # fmt: skip
    left, right, top, bottom = 45, 15, 30, 40
    n = max(len(v) for v in series.values())
    peak = max([1, *(max(v) for v in series.values() if v)])
    w, h = width - left - right, height - top - bottom

    def x(i: float) -> float:
        return left + w * i / max(1, n)

    def y(v: float) -> float:
        return top + h - h * v / peak

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
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
               'text-anchor="middle">calls answered / s</text>')  # fmt: skip
    for i, m in enumerate(markers):
        mx = x(m.t)
        out.append(f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{top + h}" '
                   'stroke="#c00" stroke-dasharray="4 3"/>')  # fmt: skip
        out.append(f'<text x="{mx + 3:.1f}" y="{top + 12 + 12 * (i % 4)}" fill="#c00">'
                   f"{html.escape(m.label)}</text>")  # fmt: skip
    # the legend, right-aligned on the title line; ~6.5 px per character at 11 px
    lx = left + w - sum(24 + 6.5 * len(name) for name in series)
    for j, (name, values) in enumerate(series.items()):
        pts = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(values))
        colour = PALETTE[j % len(PALETTE)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<rect x="{lx:.1f}" y="{top - 22}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14:.1f}" y="{top - 13}">{html.escape(name)}</text>')
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
