"""The tools the supervisor agent may call: typed LangChain tools over plain callables the control plane injects.

Invariants:
- Read tools only read, through the ``ToolDeps`` callables they are given; this module imports nothing from
  ``pilot/`` or ``subagents/``.
- Tools that would spend, promote or roll back (``propose_*``) only append a ``Proposal`` to a ``ProposalBox`` and
  say so. None of them can launch, promote or roll back: a proposal goes through the guardrail rules and, where the
  rules say so, a human.
- Every tool answer is JSON text of bounded size (``MAX_TOOL_CHARS``), so a large store cannot blow up the prompt.
- Text that came from execution records is user data: it leaves here only inside ``fence_untrusted`` markers,
  truncated, with the markers themselves removed from the text so a record cannot close its own fence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

MAX_TOOL_CHARS = 1500
FENCE_OPEN = "<<<UNTRUSTED_RECORD_TEXT"
FENCE_CLOSE = "UNTRUSTED_RECORD_TEXT>>>"
_FENCE_MARKS = re.compile(r"<<<|>>>|UNTRUSTED_RECORD_TEXT", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")

ProposalKind = Literal["training", "promotion", "rollback"]


def fence_untrusted(text: str, *, limit: int = 300, label: str = "") -> str:
    """``text`` as inert data: control and zero-width characters dropped, fence markers removed, truncated."""
    clean = _FENCE_MARKS.sub("", _CONTROL.sub(" ", text))
    clean = " ".join(clean.split())
    if len(clean) > limit:
        clean = clean[: max(0, limit - 1)] + "…"
    head = f"{FENCE_OPEN} {label}".rstrip()
    return f"{head}\n{clean}\n{FENCE_CLOSE}"


@dataclass(frozen=True)
class DataSummary:
    new_records: int
    new_examples: int
    min_new_examples: int
    per_domain: dict[str, int] = field(default_factory=dict)
    samples: tuple[str, ...] = ()  # raw record text; fenced by the tool


@dataclass(frozen=True)
class KnowledgeCoverage:
    entries: int
    per_domain: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class CostEstimate:
    available: bool
    estimated_cost_usd: float = 0.0
    dph: float = 0.0
    expected_hours: float = 0.0
    gpu: str = ""
    per_run_cap_usd: float = 0.0
    remaining_today_usd: float = 0.0
    remaining_month_usd: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class EvaluationSummary:
    """The latest judged candidate and the live comparison of champion vs previous (either may be missing)."""

    version_id: str | None = None
    status: str | None = None
    verdict: str | None = None
    reason: str = ""
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_items: int | None = None
    champion: str | None = None
    live_regressed: bool | None = None
    live_reason: str = ""


@dataclass(frozen=True)
class Proposal:
    kind: ProposalKind
    reason: str
    version_id: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProposalBox:
    """What the agent proposed during one decision; the control plane rules on each."""

    items: list[Proposal] = field(default_factory=list)
    limit: int = 8

    def add(self, proposal: Proposal) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(proposal)
        return True


@dataclass(frozen=True)
class ToolDeps:
    """Read-only views of the control plane. ``knowledge`` None: no knowledge base is configured."""

    data: Callable[[], DataSummary]
    cost: Callable[[], CostEstimate]
    evaluation: Callable[[], EvaluationSummary]
    knowledge: Callable[[], KnowledgeCoverage] | None = None


def _dump(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) <= MAX_TOOL_CHARS:
        return text
    return json.dumps({"truncated": True, "head": text[: MAX_TOOL_CHARS - 60]})


def _top(counts: dict[str, int], n: int = 12) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


class _NoArgs(BaseModel):
    pass


class _ProposeTraining(BaseModel):
    reason: str = Field(description="Why a fine-tune now, citing the figures (new examples, cost, budget left).")


class _ProposePromotion(BaseModel):
    version_id: str = Field(description="The candidate model version to promote.")
    reason: str = Field(description="Why, citing the evaluation figures.")


class _ProposeRollback(BaseModel):
    reason: str = Field(description="Why, citing the live-quality figures.")


_PROPOSED = "recorded as a proposal only: the guardrail rules and, where they require it, a human decide; nothing ran"


def make_agent_tools(deps: ToolDeps, proposals: ProposalBox) -> list[BaseTool]:
    """The supervisor's tools, bound to ``deps`` (reads) and ``proposals`` (the only thing they can write)."""

    def summarize_new_data() -> str:
        d = deps.data()
        samples = [fence_untrusted(s, limit=200, label=f"sample {i + 1}") for i, s in enumerate(d.samples[:3])]
        return _dump(
            {
                "new_records": d.new_records,
                "new_examples": d.new_examples,
                "min_new_examples": d.min_new_examples,
                "per_domain_top": _top(d.per_domain),
                "domains": len(d.per_domain),
                "samples_untrusted": samples,
            }
        )

    def knowledge_base_coverage() -> str:
        if deps.knowledge is None:
            return _dump({"configured": False, "note": "not configured"})
        k = deps.knowledge()
        return _dump({"configured": True, "entries": k.entries, "per_domain_top": _top(k.per_domain), "note": k.note})

    def estimate_training_cost() -> str:
        return _dump(asdict(deps.cost()))

    def evaluation_report() -> str:
        return _dump(asdict(deps.evaluation()))

    def propose_training_run(reason: str) -> str:
        estimate = deps.cost()
        figures = {"estimated_cost_usd": estimate.estimated_cost_usd, "dph": estimate.dph, "gpu": estimate.gpu}
        added = proposals.add(Proposal(kind="training", reason=reason[:500], figures=figures))
        return _dump({"status": "proposed" if added else "ignored: too many proposals", "note": _PROPOSED})

    def propose_promotion(version_id: str, reason: str) -> str:
        added = proposals.add(Proposal(kind="promotion", reason=reason[:500], version_id=version_id[:80]))
        return _dump({"status": "proposed" if added else "ignored: too many proposals", "note": _PROPOSED})

    def propose_rollback(reason: str) -> str:
        added = proposals.add(Proposal(kind="rollback", reason=reason[:500]))
        return _dump({"status": "proposed" if added else "ignored: too many proposals", "note": _PROPOSED})

    specs: list[tuple[Callable[..., str], type[BaseModel], str]] = [
        (summarize_new_data, _NoArgs, "New data since the last training: counts, top domains, fenced samples."),
        (knowledge_base_coverage, _NoArgs, "How many solutions the knowledge base holds, per domain."),
        (estimate_training_cost, _NoArgs, "A rough price for a fine-tune now, and the budget left under each cap."),
        (evaluation_report, _NoArgs, "The latest candidate's evaluation and the live quality of the champion."),
        (propose_training_run, _ProposeTraining, "Propose a fine-tune. Only a proposal: rules and humans decide."),
        (propose_promotion, _ProposePromotion, "Propose promoting a candidate. Only a proposal."),
        (propose_rollback, _ProposeRollback, "Propose rolling the champion back. Only a proposal."),
    ]
    return [
        StructuredTool.from_function(func=fn, name=fn.__name__, description=doc, args_schema=schema)
        for fn, schema, doc in specs
    ]


TOOL_NAMES = (
    "summarize_new_data",
    "knowledge_base_coverage",
    "estimate_training_cost",
    "evaluation_report",
    "propose_training_run",
    "propose_promotion",
    "propose_rollback",
)
