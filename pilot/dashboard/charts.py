"""Charts as SVG drawn on the server: no chart library, no script, no network; they print and work offline.

Every chart is an ``<svg class="chart">`` with one ``<g class="series" data-series="NAME">`` per series (the
browser tests count them), a legend, and ``<title>`` tooltips on the marks. Values are escaped; sizes are in
viewBox units, so CSS scales the chart to its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

W, H = 720, 220  # the default viewBox; full-width charts pass width=1400
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 14, 34
PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899", "#64748b")


@dataclass(frozen=True)
class Mark:
    """A vertical marker at x index ``at`` (a promotion, a rollback)."""

    at: int
    label: str
    kind: str = "promotion"


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (the top of an axis)."""
    if value <= 0:
        return 1.0
    for exp in range(-4, 10):
        for step in (1, 2, 2.5, 5):
            top = step * 10**exp
            if top >= value:
                return float(top)
    return value


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"
    if unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:,.3g}"


def _frame(y_max: float, y_min: float, unit: str, labels: Sequence[str], every: int, w: int) -> list[str]:
    parts = []
    plot_h = H - PAD_T - PAD_B
    for i in range(5):
        value = y_min + (y_max - y_min) * i / 4
        y = PAD_T + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{w - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(value, unit)}</text>')
    n = max(len(labels), 1)
    step = (w - PAD_L - PAD_R) / n
    for i, label in enumerate(labels):
        if i % every == 0 or (i == n - 1 and i % every > every // 2):
            x = PAD_L + step * (i + 0.5)
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{H - PAD_B + 14}" text-anchor="middle">{escape(label)}</text>'
            )
    return parts


def _legend(names: Sequence[str]) -> str:
    items, x = [], PAD_L
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        items.append(f'<rect x="{x}" y="{H - 12}" width="10" height="10" fill="{colour}"/>')
        items.append(f'<text class="legend" x="{x + 14}" y="{H - 3}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return "".join(items)


def _wrap(title: str, body: list[str], names: Sequence[str], w: int) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {w} {H}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}{_legend(names)}</svg>'
    )


def _short(day: str) -> str:
    return day[5:] if len(day) == 10 else day


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    unit: str = "$",
    cap: float | None = None,
    width: int = W,
) -> Markup:
    """Bars per label, the series stacked (spend per day: actual, reserved, LLM), with an optional cap line."""
    n = max(len(labels), 1)
    totals = [sum(float(s[i] or 0.0) for s in series.values()) for i in range(len(labels))]
    y_max = _nice_max(max([*totals, cap or 0.0, 0.0]))
    plot_h = H - PAD_T - PAD_B
    step = (width - PAD_L - PAD_R) / n
    body = _frame(y_max, 0.0, unit, [_short(x) for x in labels], max(1, n // 8), width)
    base = [0.0] * len(labels)
    for k, (name, values) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        rects = []
        for i, raw in enumerate(values):
            value = float(raw or 0.0)
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y = PAD_T + plot_h - plot_h * base[i] / y_max - h
            x = PAD_L + step * i + step * 0.12
            rects.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.76:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(labels[i])} {escape(name)}: {_fmt(value, unit)}</title></rect>"
            )
            base[i] += value
        body.append(f'<g class="series" data-series="{escape(name)}">{"".join(rects)}</g>')
    if cap:
        y = PAD_T + plot_h - plot_h * cap / y_max
        body.append(
            f'<line class="cap" x1="{PAD_L}" x2="{width - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="cap-label" x="{width - PAD_R}" y="{y - 3:.1f}" text-anchor="end">'
            f"cap {_fmt(cap, unit)}</text>"
        )
    return _wrap(title, body, list(series), width)


def lines(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    unit: str = "",
    y_range: tuple[float, float] | None = None,
    marks: Sequence[Mark] = (),
    points: bool = False,
    width: int = W,
) -> Markup:
    """One polyline per series over the labels (gaps where a value is None); vertical marks on top."""
    n = max(len(labels), 1)
    values = [float(v) for s in series.values() for v in s if v is not None]
    if y_range is None:
        lo = min(values, default=0.0)
        y_min = 0.0 if lo >= 0 else -_nice_max(-lo)
        y_max = _nice_max(max(values, default=1.0))
    else:
        y_min, y_max = y_range
    span = (y_max - y_min) or 1.0
    plot_h = H - PAD_T - PAD_B
    step = (width - PAD_L - PAD_R) / n
    body = _frame(y_max, y_min, unit, [_short(x) for x in labels], max(1, n // 8), width)

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD_L + step * (i + 0.5), PAD_T + plot_h - plot_h * (v - y_min) / span

    for k, (name, vals) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        runs: list[list[tuple[float, float]]] = [[]]
        dots = []
        for i, v in enumerate(vals):
            if v is None:
                runs.append([])
                continue
            x, y = xy(i, float(v))
            runs[-1].append((x, y))
            if points or len(vals) <= 1:
                dots.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                    f"<title>{escape(labels[i])} {escape(name)}: {_fmt(float(v), unit)}</title></circle>"
                )
        paths = "".join(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            + '"/>'
            for run in runs
            if len(run) > 1
        )
        body.append(f'<g class="series" data-series="{escape(name)}">{paths}{"".join(dots)}</g>')
    for mark in marks:
        x = PAD_L + step * (mark.at + 0.5)
        body.append(
            f'<g class="mark mark-{escape(mark.kind)}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" '
            f'y2="{H - PAD_B}"/><title>{escape(mark.label)}</title></g>'
        )
    return _wrap(title, body, list(series), width)
