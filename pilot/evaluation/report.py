"""The gate's report as plain lines (Slack, logs and the CLI share them)."""

from __future__ import annotations

from typing import Any


def gate_report_lines(version_id: str, evaluation: dict[str, Any]) -> list[str]:
    """The gate's report as plain lines (Slack and logs): verdict, overall figures with the interval, and one
    line per domain. ``evaluation`` is a version's stored ``eval_report``."""
    if not evaluation:
        return [f"{version_id}: not evaluated"]
    level = f"{float(evaluation.get('confidence', 0.95)):.0%}" if "confidence" in evaluation else "95%"
    lines = [
        f"{version_id}: {str(evaluation.get('verdict', '?')).upper()} — {evaluation.get('reason', '')}",
        f"candidate {fmt_score(evaluation.get('candidate_score'))} vs {evaluation.get('champion_label') or 'champion'} "
        f"{fmt_score(evaluation.get('champion_score'))}: diff {fmt_signed(evaluation.get('diff'))}, {level} CI "
        f"[{fmt_signed(evaluation.get('ci_low'))}, {fmt_signed(evaluation.get('ci_high'))}], sign test "
        f"p={fmt_p(evaluation.get('sign_test_p'))}, n={evaluation.get('n_items', '?')}",
    ]
    for domain, d in sorted((evaluation.get("per_domain") or {}).items()):
        lines.append(
            f"  {domain}: {fmt_score(d.get('candidate'))} vs {fmt_score(d.get('champion'))} "
            f"(diff {fmt_signed(d.get('diff'))}, n={d.get('n', '?')})"
        )
    if modes := evaluation.get("scoring_modes"):
        lines.append(f"scoring: {modes.get('code', 0)} code items run in the sandbox, {modes.get('exact', 0)} by match")
    if (judge := evaluation.get("judge")) and judge.get("candidate_score") is not None:
        lines.append(
            f"judge (advice only, k={judge.get('k')}): {fmt_score(judge['candidate_score'])} vs "
            f"{fmt_score(judge.get('champion_score'))}, agreement {fmt_score(judge.get('mean_agreement'))}"
        )
    return lines


def fmt_score(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def fmt_signed(value: Any) -> str:
    return "-" if value is None else f"{float(value):+.3f}"


def fmt_p(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"
