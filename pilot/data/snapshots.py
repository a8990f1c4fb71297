"""The bridge between the store and the data subagent: which records are new, and snapshots of them.

"New" means stored after the watermark: the newest record a *successful* training run's snapshot saw. Counting
new curated examples reads only rows past the watermark (an index range on the primary key), so a decision's
cost grows with new records, not with the store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from pilot.context import PilotContext
from subagents.data.errors import SnapshotError
from subagents.data.split import split_key
from pilot.store.models import DatasetSnapshot, ExecutionRecordRow, TrainingRun
from pilot.store.status import EntityType, RunStatus
from pilot.store.writers import record_event
from subagents.data.curate import CurationConfig, CurationResult, curate
from subagents.data.preference import PreferenceData, preference_data
from subagents.data.rewards import RewardWeights
from subagents.data.schema import ExecutionRecord
from subagents.data.snapshot import write_snapshot

logger = logging.getLogger(__name__)

PAGE = 5000


@dataclass(frozen=True)
class NewData:
    watermark: int
    newest_pk: int
    new_records: int
    new_examples: int
    per_domain: dict[str, int]


def curation_config(ctx: PilotContext) -> CurationConfig:
    c = ctx.settings.curation
    return CurationConfig(
        require_success=c.require_success,
        require_tests_pass=c.require_tests_pass,
        min_rating=c.min_rating,
        near_dup_threshold=c.near_dup_threshold,
        eval_fraction=c.eval_fraction,
        golden_fraction=c.golden_fraction,
        cluster_threshold=c.cluster_threshold,
    )


def reward_weights(ctx: PilotContext) -> RewardWeights | None:
    """The reward weights when the reinforcement layer is on (curation then keeps failures), else None."""
    if not ctx.settings.reinforcement.enabled:
        return None
    return RewardWeights(**ctx.settings.rewards.model_dump())


def preference_for(ctx: PilotContext, result: CurationResult) -> PreferenceData | None:
    """KTO examples and DPO pairs from the train split, when the reinforcement layer is on."""
    if not ctx.settings.reinforcement.enabled:
        return None
    r = ctx.settings.reinforcement
    return preference_data(result, min_margin=r.min_pair_margin, max_pairs_per_cluster=r.max_pairs_per_cluster)


def frozen_golden(session: Session) -> set[str]:
    """The split keys of the newest snapshot's golden prompts: a task once golden stays golden (its whole
    cluster with it), so the gate never measures a candidate on tasks it trained on."""
    last = session.exec(select(DatasetSnapshot).order_by(col(DatasetSnapshot.created_at).desc())).first()
    path = Path(last.path) / "golden.jsonl" if last is not None else None
    if path is None or not path.is_file():
        return set()
    keys: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line).get("messages", [])
        prompt = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        keys.add(split_key(prompt))
    return keys


def iter_records(session: Session, *, after_pk: int = 0, upto_pk: int | None = None) -> Iterator[ExecutionRecord]:
    """Stored records with ``after_pk < id <= upto_pk``, oldest first, paged by primary key."""
    last = after_pk
    while True:
        query = select(ExecutionRecordRow.id, ExecutionRecordRow.payload).where(col(ExecutionRecordRow.id) > last)
        if upto_pk is not None:
            query = query.where(col(ExecutionRecordRow.id) <= upto_pk)
        rows = session.exec(query.order_by(col(ExecutionRecordRow.id)).limit(PAGE)).all()
        if not rows:
            return
        for _pk, payload in rows:
            yield ExecutionRecord.model_validate_json(payload)
        last = int(rows[-1][0] or last)


def training_watermark(session: Session) -> int:
    """The newest record id seen by the snapshot of the latest successful run (0 if none)."""
    pk = session.exec(
        select(func.max(DatasetSnapshot.max_record_pk))
        .join(TrainingRun, col(TrainingRun.snapshot_id) == col(DatasetSnapshot.id))
        .where(TrainingRun.status == RunStatus.SUCCEEDED)
    ).one()
    return int(pk or 0)


def newest_record_pk(session: Session) -> int:
    return int(session.exec(select(func.max(ExecutionRecordRow.id))).one() or 0)


def new_data(ctx: PilotContext) -> NewData:
    with ctx.store.session() as session:
        watermark = training_watermark(session)
        newest = newest_record_pk(session)
        records = list(iter_records(session, after_pk=watermark, upto_pk=newest))
    result = curate(records, curation_config(ctx))
    per_domain: dict[str, int] = {}
    for example in (*result.train, *result.eval, *result.golden):
        per_domain[example.domain] = per_domain.get(example.domain, 0) + 1
    return NewData(
        watermark=watermark,
        newest_pk=newest,
        new_records=len(records),
        new_examples=len(result.train) + len(result.eval) + len(result.golden),
        per_domain=dict(sorted(per_domain.items())),
    )


def make_snapshot(ctx: PilotContext, *, actor: str = "supervisor") -> tuple[DatasetSnapshot, CurationResult]:
    """Curate every stored record into an immutable snapshot; an identical snapshot is reused, not rewritten."""
    with ctx.store.session() as session:
        newest = newest_record_pk(session)
        records = list(iter_records(session, upto_pk=newest))
        golden_keys = frozen_golden(session)
    result = curate(records, curation_config(ctx), frozen_golden=golden_keys, rewards=reward_weights(ctx))
    preference = preference_for(ctx, result)
    root = ctx.settings.snapshots_dir
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex[:8]}"
    try:  # the final pass refuses to write a snapshot that still holds a secret or PII (ResidualSecretError)
        manifest = write_snapshot(
            result, staging, source={"records": len(records), "max_record_pk": newest}, preference=preference
        )
    except SnapshotError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        with ctx.store.session(write=True) as session:
            record_event(
                session,
                entity_type=EntityType.DATASET_SNAPSHOT,
                entity_id="refused",
                actor=actor,
                reason=f"snapshot refused: {exc}"[:2000],
            )
        raise
    snapshot_id = f"snap-{manifest.content_hash[:12]}"
    final = root / snapshot_id
    with ctx.store.session(write=True) as session:
        existing = session.exec(
            select(DatasetSnapshot).where(DatasetSnapshot.content_hash == manifest.content_hash)
        ).first()
        if existing is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return existing, result
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        counts = manifest.counts
        snapshot = DatasetSnapshot(
            id=snapshot_id,
            content_hash=manifest.content_hash,
            path=str(final),
            max_record_pk=newest,
            train_count=int(counts.get("train", 0)),
            eval_count=int(counts.get("eval", 0)),
            golden_count=int(counts.get("golden", 0)),
            manifest=manifest.model_dump(mode="json"),
        )
        session.add(snapshot)
        session.flush()
        record_event(
            session,
            entity_type=EntityType.DATASET_SNAPSHOT,
            entity_id=snapshot_id,
            actor=actor,
            reason=f"snapshot of {len(records)} records: {snapshot.train_count} train, {snapshot.eval_count} eval, "
            f"{snapshot.golden_count} golden",
            new="created",
        )
    logger.info("Snapshot %s written to %s", snapshot_id, final)
    return snapshot, result
