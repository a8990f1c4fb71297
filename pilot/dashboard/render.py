"""Templates and the charts each page draws from its query results (pilot/dashboard/templates, static/)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pilot.dashboard import charts

STATIC = {"dashboard.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}


def _money(value: Any) -> str:
    return "-" if value is None else f"${float(value):,.2f}"


def _score(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _when(value: Any) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)


def _kv(value: Any) -> str:
    """A small dict as ``a 1, b 2`` (curation figures), or ``-``."""
    if not value:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    return str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


@cache
def environment() -> Environment:
    root = resources.files("pilot.dashboard") / "templates"
    env = Environment(loader=FileSystemLoader(str(root)), autoescape=select_autoescape(["html"]), auto_reload=False)
    env.filters.update(money=_money, score=_score, when=_when, pct=_pct, kv=_kv)
    return env


@cache
def static_file(name: str) -> bytes:
    return (resources.files("pilot.dashboard") / "static" / name).read_bytes()


def page(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def overview_charts(data: dict[str, Any]) -> dict[str, Markup]:
    spend = data["spend"]
    live = data["live"]
    index = {d: i for i, d in enumerate(live["days"])}
    marks = [
        charts.Mark(index[m["day"]], f"{m['kind']} to {m['to'] or 'base'} by {m['actor']}: {m['reason']}", m["kind"])
        for m in data["marks"]
        if m["day"] in index
    ]
    golden = data["golden"]
    return {
        "spend": charts.stacked_bars(
            "Spend per day (USD): GPU actual, reserved, LLM",
            spend["days"],
            spend["series"],
            cap=spend["cap_per_day_usd"],
            width=1400,
        ),
        "golden": charts.lines(
            "Golden-set score per model version",
            [g["id"] for g in golden],
            {"golden score": [g["score"] for g in golden]},
            y_range=(0.0, 1.0),
            points=True,
        ),
        "live": charts.lines(
            "Live success rate per model version, per day",
            live["days"],
            live["series"],
            unit="%",
            y_range=(0.0, 1.0),
            marks=marks,
        ),
    }


def run_charts(data: dict[str, Any]) -> dict[str, Markup]:
    train, evals = data["loss"]["train"], data["loss"]["eval"]
    steps = sorted({int(s) for s, _ in train} | {int(s) for s, _ in evals})
    if not steps:
        return {}
    by_train, by_eval = {int(s): v for s, v in train}, {int(s): v for s, v in evals}
    series: dict[str, Sequence[float | None]] = {"train loss": [by_train.get(s) for s in steps]}
    if evals:
        series["eval loss"] = [by_eval.get(s) for s in steps]
    return {"loss": charts.lines("Loss per step", [str(s) for s in steps], series, points=bool(evals), width=1400)}


def data_charts(data: dict[str, Any]) -> dict[str, Markup]:
    return {
        "records": charts.stacked_bars(
            "Records per day, by domain", data["days"], data["per_domain"], unit="", width=1400
        )
    }
