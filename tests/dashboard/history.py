"""A realistic store history for the dashboard's tests, screenshots and benchmark: N days of records (success per
model version, a few domains, dead letters), snapshots with curation figures, decisions with reasons and agent
rationales, runs with attempts, events, loss curves and ledger entries, model versions with gate reports,
promotions and rollbacks, two runs in flight and one pending approval.

Rows go in by bulk ``INSERT`` (one statement per table and chunk), so a million records take seconds, not hours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert

from pilot.store import Store
from pilot.store.models import (
    AliasHistory,
    Approval,
    DatasetSnapshot,
    DeadLetter,
    Decision,
    Event,
    ExecutionRecordRow,
    ModelAlias,
    ModelVersion,
    RunAttempt,
    SpendEntry,
    TrainingRun,
    utcnow,
)

DOMAINS = ("coding", "support", "sql", "docs")
DEAD_REASONS = (
    "invalid JSON: Expecting ',' delimiter",
    "missing field: session_id",
    "success: Input should be a valid boolean",
    "record too large (over 1 MiB)",
)
CHUNK = 20_000


@dataclass(frozen=True)
class History:
    now: datetime
    run_ids: list[str]
    version_ids: list[str]
    in_flight: list[str]
    pending_approval: str | None
    champion: str | None


def _bulk(store: Store, model: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), CHUNK):
        with store.session(write=True) as s:
            s.execute(insert(model), rows[i : i + CHUNK])


def generate(
    store: Store,
    *,
    days: int = 90,
    records: int = 20_000,
    runs: int = 1_200,
    versions: int = 60,
    dead_letters: int | None = None,
    seed: int = 7,
    now: datetime | None = None,
    pending_approval: bool = True,
    env: str = "test",
) -> History:
    rng = random.Random(seed)
    now = now or utcnow()
    start = now - timedelta(days=days)

    def at(frac: float) -> datetime:
        return start + timedelta(seconds=frac * days * 86400)

    # -- decisions, snapshots, runs ---------------------------------------------------------------------------
    n_snap = max(1, days // 3)
    snapshots = [
        {
            "id": f"snap-{i:05d}",
            "content_hash": f"{i:064x}",
            "path": f"/data/snapshots/snap-{i:05d}",
            "created_at": at(i / n_snap),
            "max_record_pk": int(records * i / n_snap),
            "train_count": 800 + rng.randint(0, 400),
            "eval_count": 100,
            "golden_count": 60,
            "manifest": {
                "records_in": 1200 + rng.randint(0, 300),
                "dropped": {
                    "duplicate": rng.randint(10, 80),
                    "failed": rng.randint(50, 200),
                    "short": rng.randint(0, 9),
                },
                "scrubbed": {"secret": rng.randint(0, 6), "email": rng.randint(0, 20), "phone": rng.randint(0, 5)},
                "quarantined": [{"record_id": f"q{i}-{j}", "reason": "private key"} for j in range(rng.randint(0, 2))],
                "source": {"records": 1200, "max_record_pk": int(records * i / n_snap)},
            },
        }
        for i in range(n_snap)
    ]
    _bulk(store, DatasetSnapshot, snapshots)
    run_ids = [f"run-{i:05d}" for i in range(runs)]
    decisions, run_rows, attempts, events, ledger, approvals = [], [], [], [], [], []
    in_flight = run_ids[-2:]
    for i, run_id in enumerate(run_ids):
        created = at((i + 0.5) / runs) if run_id not in in_flight else now - timedelta(minutes=30 + 10 * i % 7)
        dec_id = f"dec-{i:05d}"
        decisions.append(
            {
                "id": dec_id,
                "thread_id": f"cycle-{i:05d}",
                "action": "finetune",
                "reason": f"{300 + i % 700} new curated examples since the last snapshot; success rate trending down",
                "figures": {"new_examples": 300 + i % 700},
                "rationale": "The drop is concentrated in sql; a LoRA on the new sessions should recover it."
                if i % 3 == 0
                else None,
                "actor": "supervisor",
                "created_at": created - timedelta(minutes=5),
                "outcome": "run launched",
            }
        )
        approval_id = f"apv-{i:05d}" if i % 4 == 0 else None
        if approval_id:
            approvals.append(
                {
                    "id": approval_id,
                    "decision_id": dec_id,
                    "kind": "training",
                    "status": "approved",
                    "thread_id": f"cycle-{i:05d}",
                    "summary": {"why": "fine-tune on new records"},
                    "cost_ceiling_usd": 4.0,
                    "requested_at": created - timedelta(minutes=4),
                    "expires_at": created + timedelta(hours=4),
                    "decided_at": created - timedelta(minutes=1),
                    "decided_by": "human:alice",
                }
            )
        live = run_id in in_flight
        ok = rng.random() > 0.25
        status = "running" if live else ("succeeded" if ok else rng.choice(["failed", "cancelled"]))
        dph = round(rng.uniform(0.2, 1.6), 3)
        hours = rng.uniform(0.3, 2.5)
        cost = round(dph * hours, 4)
        steps = 200
        curve = [[s, round(2.5 * (0.985**s) + 0.3 + rng.uniform(-0.05, 0.05), 4)] for s in range(0, steps + 1, 10)]
        evals = [[s, round(2.6 * (0.987**s) + 0.4, 4)] for s in range(0, steps + 1, 50)]
        run_rows.append(
            {
                "id": run_id,
                "decision_id": dec_id,
                "approval_id": approval_id,
                "snapshot_id": snapshots[min(n_snap - 1, int(i * n_snap / runs))]["id"],
                "status": status,
                "termination_reason": None if ok or live else "job_failed",
                "status_message": None if ok or live else "the job exited 1: CUDA out of memory",
                "provider": "vast",
                "label": f"learning-pilot/{env}/{run_id}",
                "offer_id": str(1000 + i),
                "instance_id": str(50_000 + i),
                "dph": dph,
                "estimated_cost_usd": round(cost * 1.1, 4),
                "actual_cost_usd": None if live else cost,
                "config": {},
                "metrics": {
                    "train_loss": curve[-1][1],
                    "eval_loss": evals[-1][1],
                    "steps": steps,
                    "loss_curve": curve if status != "failed" else curve[:8],
                    "eval_curve": evals,
                }
                if not live
                else {"loss_curve": curve[:10]},
                "created_at": created,
                "started_at": created + timedelta(minutes=3),
                "finished_at": None if live else created + timedelta(hours=hours),
            }
        )
        n_att = 2 if i % 9 == 0 else 1
        for n in range(1, n_att + 1):
            last = n == n_att
            attempts.append(
                {
                    "id": f"{run_id}-a{n}",
                    "run_id": run_id,
                    "n": n,
                    "status": "running" if live and last else "ended",
                    "offer_id": str(1000 + i + n),
                    "host": f"machine-{2000 + (i * 7 + n) % 500}",
                    "gpu": rng.choice(["RTX 4090", "A100 80GB", "L40S"]),
                    "dph": dph,
                    "instance_id": str(50_000 + i * 10 + n),
                    "created_at": created,
                    "launched_at": created + timedelta(minutes=1),
                    "running_since": created + timedelta(minutes=3),
                    "last_seq": str(40 + n),
                    "last_beat_at": (now - timedelta(seconds=12))
                    if live and last
                    else created + timedelta(hours=hours),
                    "ended_at": None if live and last else created + timedelta(hours=hours if last else 0.2),
                    "end_reason": None if live and last else ("host offline" if not last else "the job exited 0"),
                }
            )
        for step, (old, new) in enumerate(
            [(None, "pending"), ("pending", "provisioning"), ("provisioning", "running")]
        ):
            events.append(
                {
                    "at": created + timedelta(minutes=step),
                    "entity_type": "training_run",
                    "entity_id": run_id,
                    "actor": "system",
                    "old": old,
                    "new": new,
                    "reason": f"{new}",
                    "data": {},
                }
            )
        if not live:
            events.append(
                {
                    "at": created + timedelta(hours=hours),
                    "entity_type": "training_run",
                    "entity_id": run_id,
                    "actor": "system",
                    "old": "running",
                    "new": status,
                    "reason": f"the run {status}",
                    "data": {},
                }
            )
            ledger.append(
                {
                    "kind": "actual",
                    "category": "gpu",
                    "run_id": run_id,
                    "amount_usd": cost,
                    "active": False,
                    "note": "actual",
                    "created_at": created + timedelta(hours=hours),
                }
            )
        else:
            ledger.append(
                {
                    "kind": "reservation",
                    "category": "gpu",
                    "run_id": run_id,
                    "amount_usd": 4.0,
                    "active": True,
                    "note": "reservation",
                    "created_at": created,
                }
            )
    for d in range(days):
        ledger.append(
            {
                "kind": "actual",
                "category": "llm",
                "run_id": None,
                "amount_usd": round(rng.uniform(0.05, 0.4), 4),
                "active": False,
                "note": "supervisor agent",
                "created_at": start + timedelta(days=d, hours=12),
            }
        )
    _bulk(store, Decision, decisions)
    _bulk(store, Approval, approvals)
    _bulk(store, TrainingRun, run_rows)
    _bulk(store, RunAttempt, attempts)
    _bulk(store, SpendEntry, ledger)

    # -- model versions, aliases, history ---------------------------------------------------------------------
    done = [r for r in run_rows if r["status"] == "succeeded"]
    version_ids = [f"v{i + 1}" for i in range(min(versions, len(done)))]
    version_rows, history, champion, score = [], [], None, 0.55
    champion_at: list[tuple[datetime, str | None]] = [(start, None)]
    for i, vid in enumerate(version_ids):
        run = done[int(i * len(done) / max(len(version_ids), 1))]
        score = min(0.95, max(0.3, score + rng.uniform(-0.03, 0.05)))
        promoted = i % 3 == 0
        rolled = promoted and i % 9 == 6
        per_domain = {
            d: {
                "candidate": round(score + rng.uniform(-0.08, 0.08), 3),
                "champion": round(score - 0.02, 3),
                "diff": round(rng.uniform(-0.05, 0.09), 3),
                "n": 15,
            }
            for d in DOMAINS
        }
        version_rows.append(
            {
                "id": vid,
                "status": "rolled_back"
                if rolled
                else ("promoted" if promoted else rng.choice(["rejected", "candidate"])),
                "run_id": run["id"],
                "snapshot_id": run["snapshot_id"],
                "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
                "adapter_uri": f"s3://adapters/{vid}",
                "adapter_sha256": f"{i:064x}",
                "adapter_files": {},
                "eval_report": {
                    "verdict": "pass" if promoted else "fail",
                    "reason": "candidate beats the champion" if promoted else "no significant improvement",
                    "candidate_score": round(score, 4),
                    "champion_score": round(score - 0.02, 4),
                    "diff": 0.02,
                    "ci_low": -0.01,
                    "ci_high": 0.05,
                    "sign_test_p": 0.04,
                    "n_items": 60,
                    "per_domain": per_domain,
                },
                "created_at": run["finished_at"],
            }
        )
        if promoted:
            history.append(
                {
                    "alias": "champion",
                    "old_version": champion,
                    "new_version": vid,
                    "actor": "supervisor",
                    "reason": "gate passed: promoted",
                    "at": run["finished_at"] + timedelta(minutes=20),
                }
            )
            previous, champion = champion, vid
            champion_at.append((run["finished_at"] + timedelta(minutes=20), vid))
            if rolled:
                when = run["finished_at"] + timedelta(hours=6)
                history.append(
                    {
                        "alias": "champion",
                        "old_version": vid,
                        "new_version": previous,
                        "actor": "system",
                        "reason": "rollback: live success rate dropped",
                        "at": when,
                    }
                )
                champion = previous
                champion_at.append((when, previous))
    _bulk(store, ModelVersion, version_rows)
    _bulk(store, AliasHistory, history)
    candidate = version_ids[-1] if version_ids else None
    _bulk(
        store,
        ModelAlias,
        [
            {"name": "champion", "version_id": champion, "updated_at": now},
            {"name": "candidate", "version_id": candidate, "updated_at": now},
        ],
    )

    # -- records and dead letters -----------------------------------------------------------------------------
    quality = {vid: 0.55 + 0.35 * rng.random() for vid in version_ids}
    rows, k = [], 0
    for i in range(records):
        ts = at((i + rng.random()) / records)
        while k + 1 < len(champion_at) and champion_at[k + 1][0] <= ts:
            k += 1
        version = champion_at[k][1]
        rows.append(
            {
                "record_id": f"rec-{seed}-{i}",
                "content_hash": f"{i:x}",
                "domain": DOMAINS[rng.randrange(len(DOMAINS))],
                "success": rng.random() < quality.get(version or "", 0.5),
                "session_id": f"s{i // 5}",
                "model_version": version,
                "ts": ts,
                "ingested_at": ts,
                "source": "generated",
                "payload": "{}",
            }
        )
        if len(rows) >= CHUNK:
            _bulk(store, ExecutionRecordRow, rows)
            rows = []
    _bulk(store, ExecutionRecordRow, rows)
    n_dead = records // 100 if dead_letters is None else dead_letters
    _bulk(
        store,
        DeadLetter,
        [
            {
                "source": "inbox/batch.jsonl",
                "location": str(i),
                "reason": DEAD_REASONS[i % len(DEAD_REASONS)],
                "raw": '{"task": "..."',
                "received_at": at(rng.random()),
            }
            for i in range(n_dead)
        ],
    )

    # -- the live edge: a pending approval ---------------------------------------------------------------------
    pending = None
    if pending_approval:
        pending = "apv-pending"
        _bulk(
            store,
            Decision,
            [
                {
                    "id": "dec-pending",
                    "thread_id": "cycle-pending",
                    "action": "finetune",
                    "reason": "412 new examples; sql success down 6 points",
                    "figures": {},
                    "rationale": "Worth a run: the sql regressions share one schema change.",
                    "actor": "supervisor",
                    "created_at": now - timedelta(minutes=3),
                }
            ],
        )
        _bulk(
            store,
            Approval,
            [
                {
                    "id": pending,
                    "decision_id": "dec-pending",
                    "kind": "training",
                    "status": "pending",
                    "thread_id": "cycle-pending",
                    "summary": {"why": "fine-tune on 412 new examples"},
                    "cost_ceiling_usd": 3.5,
                    "requested_at": now - timedelta(minutes=3),
                    "expires_at": now + timedelta(hours=2),
                }
            ],
        )
    _bulk(store, Event, events)
    return History(now, run_ids, version_ids, in_flight, pending, champion)
