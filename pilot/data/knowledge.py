"""Keeping the knowledge base in step with the store, and searching it.

Invariants:
- Only curated examples go in: the records pass the same curation as training data (success and test filters,
  secret/PII scrub, prompt-injection quarantine, dedup), and the task text is scrubbed and screened too, since
  it is pasted into future prompts. Examples in the golden split never enter the knowledge base: the split is
  keyed on the task, so a golden task's solutions would leak the evaluation set into the candidate's prompts.
- Refresh is incremental and idempotent: it reads records past the ``kb_watermark`` (a ``pilot_state`` row)
  in pages, upserts (the point id is the record's content hash) and then advances the watermark in the store.
  A crash between the two re-reads the page next time and rewrites the same points.
- A solution's ``success_rate`` is over every stored report of that exact solution (same content hash), so a
  flaky one that also failed ranks below one that always worked; it is refreshed whenever the solution is
  reported again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from pilot.context import PilotContext
from subagents.data.final_pass import check_payloads
from pilot.data.snapshots import curation_config, iter_records, newest_record_pk
from pilot.settings import Settings
from pilot.store.models import ExecutionRecordRow, PilotState, utcnow
from pilot.store.writers import record_event
from pilot.store.status import EntityType
from subagents.data.curate import curate
from subagents.data.injection import screen
from subagents.data.schema import ExecutionRecord, content_hash
from subagents.data.scrub import scrub
from tools.knowledge import FastEmbedEmbedder, Hit, KnowledgeBase, Solution, open_qdrant

logger = logging.getLogger(__name__)

WATERMARK_KEY = "kb_watermark"
PAGE = 5000


@dataclass
class KbReport:
    enabled: bool = True
    watermark_from: int = 0
    watermark_to: int = 0
    records_read: int = 0
    upserted: int = 0
    skipped_golden: int = 0
    skipped_task_injection: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # curation's reasons (failed, duplicate, ...)
    quarantined: int = 0
    scrubbed: Counter[str] = field(default_factory=Counter)
    total: int = 0  # points in the collection afterwards

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "watermark_from": self.watermark_from,
            "watermark_to": self.watermark_to,
            "records_read": self.records_read,
            "upserted": self.upserted,
            "skipped_golden": self.skipped_golden,
            "skipped_task_injection": self.skipped_task_injection,
            "dropped": dict(self.dropped),
            "quarantined": self.quarantined,
            "scrubbed": dict(self.scrubbed),
            "total": self.total,
        }


def open_knowledge_base(settings: Settings) -> KnowledgeBase:
    """The knowledge base the settings describe. Local mode locks its folder: one per process (the daemon's)."""
    k = settings.knowledge
    path = None if k.qdrant_url else (k.qdrant_path or settings.data_dir / "qdrant")
    client = open_qdrant(url=k.qdrant_url, path=path)  # first: a held folder lock is the likelier failure
    try:
        embedder = FastEmbedEmbedder(model_name=k.embedding_model, model_path=k.embedding_model_path)
    except BaseException:
        client.close()
        raise
    return KnowledgeBase(client, embedder, k.collection)


def knowledge_base(ctx: PilotContext) -> KnowledgeBase:
    """The process's one knowledge base (local-mode Qdrant allows one client per folder), opened on first use and
    closed with the context."""
    if ctx._kb is None:
        ctx._kb = open_knowledge_base(ctx.settings)
    kb: KnowledgeBase = ctx._kb
    return kb


@contextmanager
def _borrowed(settings: Settings, kb: KnowledgeBase | None) -> Iterator[KnowledgeBase]:
    if kb is not None:
        yield kb
        return
    opened = open_knowledge_base(settings)
    try:
        yield opened
    finally:
        opened.client.close()


def kb_watermark(session: Session) -> int:
    row = session.get(PilotState, WATERMARK_KEY)
    return int(row.value) if row else 0


def _set_watermark(session: Session, pk: int) -> None:
    row = session.get(PilotState, WATERMARK_KEY, with_for_update=True)
    if row is None:
        session.add(PilotState(key=WATERMARK_KEY, value=str(pk)))
    elif int(row.value) < pk:  # never move backwards (two refreshers: the later page wins)
        row.value = str(pk)
        row.updated_at = utcnow()
    session.flush()


def _success_rates(session: Session, hashes: Sequence[str]) -> dict[str, tuple[int, float]]:
    """content hash -> (reports, success rate) over every stored record with that hash."""
    out: dict[str, tuple[int, float]] = {}
    table = ExecutionRecordRow
    for start in range(0, len(hashes), 900):  # stay under SQLite's bound-parameter limit
        chunk = list(hashes[start : start + 900])
        rows = session.exec(
            select(
                table.content_hash,
                func.count(),
                func.sum(case((col(table.success), 1), else_=0)),
            )
            .where(col(table.content_hash).in_(chunk))
            .group_by(table.content_hash)
        ).all()
        for digest, reports, successes in rows:
            out[digest] = (int(reports), int(successes or 0) / int(reports))
    return out


def solutions_from(records: list[ExecutionRecord], ctx: PilotContext, report: KbReport) -> list[Solution]:
    """Curate ``records`` and turn the non-golden examples into scrubbed solutions (success rates filled later)."""
    result = curate(records, curation_config(ctx))
    report.dropped.update(result.dropped)
    report.quarantined += len(result.quarantined)
    report.scrubbed.update(result.scrubbed)
    report.skipped_golden += len(result.golden)
    by_id = {r.record_id: r for r in records}
    solutions = []
    for example in (*result.train, *result.eval):
        rec = by_id[example.record_id]
        task = scrub(rec.task)
        report.scrubbed.update(task.counts)
        if screen(task.text) is not None:
            report.skipped_task_injection += 1
            continue
        answer = next((m["content"] for m in reversed(example.messages) if m["role"] == "assistant"), rec.output)
        solutions.append(
            Solution(
                key=content_hash(rec),
                task=task.text,
                solution=answer,
                domain=rec.domain,
                success_rate=1.0,
                time=rec.timestamp,
                tags=tuple(rec.tags),
                model_version=rec.model_version,
                record_id=rec.record_id,
            )
        )
    return solutions


def refresh_knowledge_base(ctx: PilotContext, *, kb: KnowledgeBase | None = None, page: int = PAGE) -> KbReport:
    """Upsert curated solutions of the records stored since the last refresh; returns what happened."""
    report = KbReport(enabled=ctx.settings.knowledge.enabled)
    if not report.enabled:
        return report
    with _borrowed(ctx.settings, kb) as base:
        with ctx.store.session() as session:
            start = kb_watermark(session)
            newest = newest_record_pk(session)
        report.watermark_from = report.watermark_to = start
        cursor = start
        while cursor < newest:
            with ctx.store.session() as session:
                records = list(islice(iter_records(session, after_pk=cursor, upto_pk=newest), page))
                # Where this page ends: the pk of its last record (iter_records is ordered by pk).
                last_pk = _pk_of(session, records[-1].record_id) if records else newest
                solutions = solutions_from(records, ctx, report)
                rates = _success_rates(session, sorted({s.key for s in solutions}))
            solutions = [_with_rate(s, rates) for s in solutions]
            # The payloads are served into the product's prompts: the final pass refuses any still holding a secret.
            check_payloads((s.key, s.payload()) for s in solutions)
            report.upserted += base.upsert_solutions(solutions)
            report.records_read += len(records)
            with ctx.store.session(write=True) as session:
                _set_watermark(session, last_pk)
            cursor = report.watermark_to = last_pk
        report.total = base.count()
    if report.records_read:
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.KNOWLEDGE_BASE,
                entity_id=ctx.settings.knowledge.collection,
                actor="supervisor",
                reason=f"refreshed from {report.records_read} records: {report.upserted} solutions upserted, "
                f"{report.skipped_golden} golden left out, {report.total} in the collection",
                data=report.to_dict(),
            )
    logger.info("Knowledge base %s refreshed: %s", ctx.settings.knowledge.collection, report.to_dict())
    return report


def _pk_of(session: Session, record_id: str) -> int:
    return int(session.exec(select(ExecutionRecordRow.id).where(ExecutionRecordRow.record_id == record_id)).one() or 0)


def _with_rate(solution: Solution, rates: dict[str, tuple[int, float]]) -> Solution:
    reports, rate = rates.get(solution.key, (1, 1.0))
    return replace(solution, success_rate=rate, reports=reports)


def kb_search(
    settings: Settings,
    query: str,
    top_k: int | None = None,
    *,
    min_success_rate: float | None = None,
    domain: str | None = None,
    kb: KnowledgeBase | None = None,
) -> list[Hit]:
    """Search with the configured defaults; opens (and closes) the knowledge base unless one is given."""
    k = settings.knowledge
    with _borrowed(settings, kb) as base:
        return base.search(
            query,
            top_k=top_k or k.top_k,
            min_success_rate=k.min_success_rate if min_success_rate is None else min_success_rate,
            domain=domain,
        )
