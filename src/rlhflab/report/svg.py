"""Plots as inline SVG text: no plotting library, no JavaScript, no network.

`line_chart` draws one or more (x, y) series on shared axes with "nice" ticks, a legend and
optional log-scaled x; points whose y is None or not finite break the line instead of being
drawn at 0. The output is a complete `<svg>` element, usable inline in HTML or saved as a .svg
file (docs/ embeds such files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


@dataclass
class Series:
    """One line: `x` and `y` of equal length; `y` entries may be None (a gap)."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    color: str | None = None
    dashed: bool = False
    markers: bool = False
    """Draw a dot at every point (useful for short series)."""


@dataclass
class Axis:
    lo: float
    hi: float
    log: bool = False
    ticks: list[float] = field(default_factory=list)

    def scale(self, v: float, a: float, b: float) -> float:
        """Map data value `v` into pixel range [a, b]."""
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        t = math.log10(v) if self.log else v
        return a + (t - lo) / (hi - lo) * (b - a) if hi > lo else (a + b) / 2


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, k = [], 0
    while start + k * step <= hi + step * 1e-9:
        ticks.append(round(start + k * step, 12))
        k += 1
    return ticks


def _axis(values: list[float], log: bool, pad_zero: bool) -> Axis:
    if log:
        values = [v for v in values if v > 0]
    if not values:
        return Axis(1.0, 10.0, log) if log else Axis(0.0, 1.0)
    lo, hi = min(values), max(values)
    if log:
        lo_e, hi_e = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        hi_e = max(hi_e, lo_e + 1)
        return Axis(10.0 ** lo_e, 10.0 ** hi_e, True, [10.0 ** e for e in range(lo_e, hi_e + 1)])
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    if pad_zero and lo > 0 and lo < 0.25 * hi:
        lo = 0.0
    margin = 0.03 * (hi - lo)  # lines at the extremes stay off the frame
    lo = lo - margin if lo < 0 else max(lo - margin, 0.0)  # the margin never crosses 0
    hi = hi + margin if hi > 0 else min(hi + margin, 0.0)
    ticks = nice_ticks(lo, hi)
    return Axis(min(lo, ticks[0]), max(hi, ticks[-1]), False, ticks)


def fmt_tick(v: float) -> str:
    """Compact tick label: 0.001, 2.5, 1200, 0.00025, 3.5e-05, 3e+06."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.3g}"  # 3 digits: neighbouring ticks such as 2.5e-4 and 3e-4 stay distinct
    if v == int(v):
        return str(int(v))  # 15000, not 1.5e+04
    return f"{v:.4g}"


def _open(width: int, height: int, title: str) -> list[str]:
    """The start of a chart: the <svg> element, a white background and the title."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="17" text-anchor="middle" font-size="13" font-weight="bold">'
                   f'{escape(title)}</text>')
    return out


def line_chart(series: Sequence[Series], title: str = "", x_label: str = "", y_label: str = "",
               width: int = 560, height: int = 300, log_x: bool = False, log_y: bool = False) -> str:
    """An SVG line chart of `series` on shared axes. Empty input gives a chart saying "no data"."""
    ml, mr, mt, mb = 62, 16, 28 if title else 12, 44
    legend_rows = len(series) if len(series) > 1 else 0
    height_total = height + 16 * legend_rows + (8 if legend_rows else 0)
    pw, ph = width - ml - mr, height - mt - mb
    xs = [float(x) for s in series for x, y in zip(s.x, s.y) if _finite(y) and _finite(x)]
    ys = [float(y) for s in series for x, y in zip(s.x, s.y) if _finite(y) and _finite(x)]
    out = _open(width, height_total, title)
    if not ys:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(out)
    ax, ay = _axis(xs, log_x, pad_zero=False), _axis(ys, log_y, pad_zero=False)

    def px(v: float) -> float:
        return ax.scale(v, ml, ml + pw)

    def py(v: float) -> float:
        return ay.scale(v, mt + ph, mt)

    out.append(_frame(ax, ay, (ml, mt, pw, ph), x_label, y_label))
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        segment: list[str] = []
        for x, y in zip(s.x, s.y):
            ok = _finite(x) and _finite(y) and (not log_x or x > 0) and (not log_y or y > 0)
            if ok:
                segment.append(f"{px(float(x)):.1f},{py(float(y)):.1f}")
            elif segment:  # a gap ends the current line
                out.append(_polyline(segment, color, dash))
                segment = []
        if segment:
            out.append(_polyline(segment, color, dash))
        if s.markers or sum(1 for y in s.y if _finite(y)) == 1:
            for x, y in zip(s.x, s.y):
                if _finite(x) and _finite(y) and (not log_x or x > 0) and (not log_y or y > 0):
                    out.append(f'<circle cx="{px(float(x)):.1f}" cy="{py(float(y)):.1f}" r="2.5" fill="{color}">'
                               f'<title>{escape(s.name)}: ({fmt_tick(float(x))}, {float(y):.4g})</title></circle>')
    for i, s in enumerate(series if legend_rows else ()):
        color = s.color or PALETTE[i % len(PALETTE)]
        y = height + 16 * i + 10  # below the x-axis label
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<line x1="{ml}" x2="{ml + 22}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" stroke-width="2"{dash}/>'
                   f'<text x="{ml + 28}" y="{y}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _frame(ax: Axis, ay: Axis, box: tuple[float, float, float, float], x_label: str, y_label: str) -> str:
    """The plot box, grid lines, tick labels and axis labels of a chart."""
    ml, mt, pw, ph = box
    out = [f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in ay.ticks:
        y = ay.scale(t, mt + ph, mt)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 5}" y="{y + 4:.1f}" text-anchor="end">{fmt_tick(t)}</text>')
    for t in ax.ticks:
        x = ax.scale(t, ml, ml + pw)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#f3f3f3"/>'
                   f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle">{fmt_tick(t)}</text>')
    if x_label:
        out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 33}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">'
                   f'{escape(y_label)}</text>')
    return "".join(out)


def _bins(n: int, max_bars: int) -> list[range]:
    """Consecutive index ranges covering 0..n-1, at most `max_bars` of them, as equal as possible."""
    k = min(n, max_bars)
    return [range(n * i // k, n * (i + 1) // k) for i in range(k)]


def stacked_bar_chart(x: Sequence[float], parts: Sequence[Series], title: str = "", x_label: str = "",
                      y_label: str = "", width: int = 560, height: int = 300, max_bars: int = 200) -> str:
    """Bars at `x` stacking the `parts` (each a Series whose `y` has one value per x; None or
    non-finite counts as 0, negative values are drawn as 0). More than `max_bars` x values are
    averaged in consecutive bins (a bar's x is its bin's first x). Legend: one row per part."""
    ml, mr, mt, mb = 62, 16, 28 if title else 12, 44
    height_total = height + 16 * len(parts) + 8
    pw, ph = width - ml - mr, height - mt - mb
    out = _open(width, height_total, title)
    xs = [float(v) for v in x]
    val = [[max(float(v), 0.0) if _finite(v) else 0.0 for v in p.y] for p in parts]
    bins = _bins(len(xs), max_bars)
    bars = [(xs[b[0]], [sum(col[i] for i in b) / len(b) for col in val]) for b in bins]
    tops = [sum(h) for _, h in bars]
    if not bars or max(tops) <= 0:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(out)
    spacing = min((b[0] - a[0] for a, b in zip(bars, bars[1:])), default=1.0) or 1.0
    lo, hi = bars[0][0] - spacing / 2, bars[-1][0] + spacing / 2  # the axis ends half a bar outside the bars
    ax = Axis(lo, hi, False, [t for t in nice_ticks(lo, hi) if lo <= t <= hi])
    ay = _axis([0.0, max(tops)], False, pad_zero=False)
    out.append(_frame(ax, ay, (ml, mt, pw, ph), x_label, y_label))
    bar_w = max(abs(ax.scale(spacing, 0, pw) - ax.scale(0, 0, pw)) * 0.8, 0.5)
    colors = [p.color or PALETTE[i % len(PALETTE)] for i, p in enumerate(parts)]
    for bx, heights in bars:
        cx, base = ax.scale(bx, ml, ml + pw), 0.0
        for name, h, color in zip((p.name for p in parts), heights, colors):
            if h <= 0:
                continue
            y0, y1 = ay.scale(base, mt + ph, mt), ay.scale(base + h, mt + ph, mt)
            out.append(f'<rect class="bar" x="{cx - bar_w / 2:.2f}" y="{y1:.2f}" width="{bar_w:.2f}" '
                       f'height="{max(y0 - y1, 0.0):.2f}" fill="{color}"><title>{escape(name)} at {fmt_tick(bx)}: '
                       f'{h:.4g}</title></rect>')
            base += h
    for i, (p, color) in enumerate(zip(parts, colors)):
        y = height + 16 * i + 10  # below the x-axis label
        out.append(f'<rect x="{ml}" y="{y - 9}" width="22" height="9" fill="{color}"/>'
                   f'<text x="{ml + 28}" y="{y}">{escape(p.name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _polyline(points: list[str], color: str, dash: str) -> str:
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{" ".join(points)}"/>'
