"""Rich rendering of the CLI's reports (the data comes from ``pilot.service.status`` and ``models_report``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from sqlmodel import col, select

from pilot.evaluation.report import fmt_score, fmt_signed, gate_report_lines
from pilot.serving.registry import history
from pilot.store import Store
from pilot.store.models import ModelVersion
from pilot.store.status import Alias
from pilot.store.writers import alias_target


def _money(value: Any) -> str:
    return "-" if value is None else f"${float(value):.2f}"


def render_status(console: Console, report: dict[str, Any]) -> None:
    paused = "[bold red]PAUSED (kill switch)[/]" if report["paused"] else "[green]active[/]"
    champion = report["champion"]
    champ = champion["version"] or f"base model ({champion['base_model']})"
    if champion.get("score") is not None:
        champ += f"  golden score {champion['score']:.3f}"
    spend = report["spend"]
    records = report["records"]
    console.print(f"[bold]Learning Pilot[/] · env {report['env']} · {paused}")
    console.print(f"champion: [bold]{champ}[/]")
    console.print(
        f"spend: today {_money(spend['today_usd'])} / {_money(spend['cap_per_day_usd'])} · month "
        f"{_money(spend['month_usd'])} / {_money(spend['cap_per_month_usd'])} · "
        f"reserved {_money(spend['reserved_usd'])}"
    )
    console.print(f"records: {records['total']} stored, {records['dead_letters']} dead-lettered")
    others = report.get("other_installations") or {}
    if others.get("count"):
        console.print(
            f"[yellow]{others['count']} instance(s) of env {report['env']} belong to another installation[/] "
            f"(not {report.get('installation')}; left alone; seen {others.get('seen_at')}): "
            + ", ".join(sorted(others.get("labels") or {}))[:300]
        )
    if report["pending_approvals"]:
        table = Table(title="pending approvals", title_justify="left")
        for column in ("id", "kind", "why", "may spend at most", "expires"):
            table.add_column(column)
        for a in report["pending_approvals"]:
            table.add_row(a["id"], a["kind"], str(a["why"])[:80], _money(a["cost_ceiling_usd"]), str(a["expires_at"]))
        console.print(table)
    else:
        console.print("pending approvals: none")
    if report["runs"]:
        table = Table(title="runs", title_justify="left")
        for column in ("id", "status", "method", "provider", "est.", "actual", "created", "reason"):
            table.add_column(column)
        for r in report["runs"]:
            table.add_row(
                r["id"],
                r["status"],
                f"{r.get('method', 'sft')}: {r.get('method_data', '')}",
                r["provider"],
                _money(r["estimated_cost_usd"]),
                _money(r["actual_cost_usd"]),
                str(r["created_at"]),
                str(r["reason"] or "")[:60],
            )
        console.print(table)
    if report["decisions"]:
        table = Table(title="last decisions", title_justify="left")
        for column in ("at", "action", "reason", "outcome"):
            table.add_column(column, overflow="fold")
        for d in report["decisions"]:
            table.add_row(str(d["at"]), d["action"], str(d["reason"])[:90], str(d["outcome"] or "")[:90])
        console.print(table)
        latest = report["decisions"][0]
        if latest.get("rationale"):
            console.print(f"[bold]agent's rationale[/] ({latest['id']}): {latest['rationale']}")
        if latest.get("agent_fallback"):
            console.print(f"[yellow]agent fell back to the policy[/]: {latest['agent_fallback']}")


def models_report(store: Store) -> dict[str, Any]:
    with store.session() as session:
        versions = session.exec(select(ModelVersion).order_by(col(ModelVersion.created_at))).all()
        return {
            "aliases": {name: alias_target(session, name) for name in Alias},
            "versions": [
                {
                    "id": v.id,
                    "status": v.status,
                    "run": v.run_id,
                    "snapshot": v.snapshot_id,
                    "base_model": v.base_model,
                    "adapter_sha256": v.adapter_sha256,
                    "verdict": v.eval_report.get("verdict"),
                    "score": v.eval_report.get("candidate_score"),
                    "champion_score": v.eval_report.get("champion_score"),
                    "diff": v.eval_report.get("diff"),
                    "ci_low": v.eval_report.get("ci_low"),
                    "ci_high": v.eval_report.get("ci_high"),
                    "reason": v.eval_report.get("reason"),
                    "evaluation": v.eval_report or None,
                    "created_at": v.created_at.isoformat(timespec="seconds"),
                }
                for v in versions
            ],
            "history": [
                {
                    "alias": h.alias,
                    "from": h.old_version,
                    "to": h.new_version,
                    "actor": h.actor,
                    "reason": h.reason,
                    "at": h.at.isoformat(timespec="seconds"),
                }
                for h in history(session)
            ],
        }


def render_gate_report(console: Console, version_id: str, evaluation: dict[str, Any]) -> None:
    """The verdict, the overall difference with its confidence interval, and the per-domain table."""
    if not evaluation:
        console.print(f"evaluation of {version_id}: none stored")
        return
    first, overall, *_ = [*gate_report_lines(version_id, evaluation), ""]
    console.print(f"[bold]gate[/] {first}")
    console.print(f"  {overall}")
    domains = evaluation.get("per_domain") or {}
    if domains:
        table = Table(title=f"per domain ({version_id})", title_justify="left")
        for column in ("domain", "n", "candidate", "champion", "diff"):
            table.add_column(column, justify="left" if column == "domain" else "right")
        for domain, d in sorted(domains.items()):
            table.add_row(domain, str(d.get("n", "?")), fmt_score(d.get("candidate")), fmt_score(d.get("champion")),
                          fmt_signed(d.get("diff")))  # fmt: skip
        console.print(table)


def render_explain(console: Console, report: dict[str, Any]) -> None:
    """``learning-pilot explain``: the lineage chain, the gate report with its interval and domains, history."""
    import json

    method = report.get("method") or {}
    if method:
        console.print(f"[bold]method[/]: {method['method']} ({method['data']}), priced at {method['cost_factor']}x")
        if method.get("reason"):
            console.print(f"  why: {method['reason']}")
    for key in ("version", "records", "snapshot", "decision", "approval", "run", "adapter"):
        console.print(f"[bold]{key}[/]: {json.dumps(report[key], default=str)}")
    decision = report.get("decision") or {}
    if decision.get("rationale"):
        console.print(f"[bold]agent's rationale[/] for {decision['id']}: {decision['rationale']}")
    render_gate_report(console, report["version"]["id"], report["evaluation"] or {})
    for move in report["promotion_history"]:
        console.print(
            f"[bold]alias[/] {move['alias']}: {move['from']} -> {move['to']} at {move['at']} by {move['actor']}: "
            f"{move['reason']}"
        )


def render_models(console: Console, report: dict[str, Any]) -> None:
    aliases = ", ".join(f"{k}={v or '-'}" for k, v in report["aliases"].items())
    console.print(f"aliases: {aliases}")
    table = Table(title="model versions", title_justify="left")
    for column in ("id", "status", "run", "score", "vs champion", "diff [CI]", "adapter sha256", "verdict"):
        table.add_column(column)
    for v in report["versions"]:
        table.add_row(
            v["id"],
            v["status"],
            v["run"] or "-",
            fmt_score(v["score"]),
            fmt_score(v["champion_score"]),
            "-"
            if v.get("diff") is None
            else f"{v['diff']:+.3f} [{fmt_signed(v['ci_low'])}, {fmt_signed(v['ci_high'])}]",
            (v["adapter_sha256"] or "")[:16],
            v["verdict"] or "-",
        )
    console.print(table)
    for v in report["versions"]:
        if v.get("evaluation"):
            render_gate_report(console, v["id"], v["evaluation"])
    if report["history"]:
        table = Table(title="promotion history", title_justify="left")
        for column in ("at", "alias", "from", "to", "actor", "reason"):
            table.add_column(column, overflow="fold")
        for h in report["history"]:
            table.add_row(h["at"], h["alias"], h["from"] or "-", h["to"] or "-", h["actor"], h["reason"][:80])
        console.print(table)
