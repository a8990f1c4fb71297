"""Learning efficacy through the whole loop on CPU: records -> curation -> decision -> LoRA on the tiny base ->
evaluation by generation on the golden set -> the gate -> registry and serving target.

(a) A task where fine-tuning helps: the cycle promotes a candidate whose improvement is significant (the
    bootstrap lower bound clears the margin), deploys it, and reports the gate to Slack.
(b) A poisoned dataset (60% of the successful records carry a consistently wrong answer): the candidate is never
    promoted. The gate is judged on a trusted golden file (``evaluation.golden_path``): a golden split drawn from
    the poisoned records would share their wrong labels and could not catch them (see pilot/evaluation/evaluate.py).

Recipe (config/demo.toml, shortened to fit a unit-test budget): LoRA r16 on all projections plus
embed_tokens/lm_head, lr 3e-3, batch 32, 60 steps.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from pilot.context import build_context
from pilot.data.ingest import ingest_lines
from pilot.serving import registry
from pilot.serving.deploy import pointer_path
from pilot.settings import Settings
from pilot.store import Store
from pilot.store.models import ModelVersion
from pilot.store.status import ModelStatus
from pilot.supervisor.cycle import run_cycle
from subagents.data.samples import STYLES, convert, generate_demo_records, split_words
from tests.helpers.tiny_model import tiny_base_model
from tools.slack_fake import FakeSlack

pytestmark = [pytest.mark.train, pytest.mark.slow]

STEPS = 60
STYLE = re.compile(r" to (\S+)\.$")


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def loop_settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    return make_settings(
        policy={"min_new_examples": 50, "cooldown_minutes": 0, "approval_required_above_usd": 1.0},
        training={
            "base_model": str(tiny_base_model()),
            "base_model_params_b": 0.001,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.0,
            "modules_to_save": ["embed_tokens", "lm_head"],
            "seq_len": 64,
            "batch_size": 32,
            "learning_rate": 3e-3,
            "max_steps": STEPS,
            "warmup_ratio": 0.05,
            "poll_interval_s": 0.2,
            "tokens_per_second_estimate": 20000,
        },
        knowledge={"enabled": False},
        **overrides,
    )


def poison(lines: list[str], *, fraction: float, seed: int) -> tuple[list[str], int, int]:
    """Give ``fraction`` of the successful records a consistently wrong answer (the words in reverse order),
    still marked successful with all tests passing. Returns the lines, poisoned and successful counts."""
    rng = random.Random(seed)
    out, poisoned, successful = [], 0, 0
    for line in lines:
        record = json.loads(line)
        if record["success"]:
            successful += 1
            words = split_words(record["output"])
            style = STYLE.search(record["prompt"])
            if style and style.group(1) in STYLES and len(words) > 1 and rng.random() < fraction:
                record["output"] = convert(list(reversed(words)), style.group(1))
                poisoned += 1
        out.append(json.dumps(record))
    return out, poisoned, successful


def trusted_golden(path: Path, *, n: int, seed: int) -> Path:
    """A curated golden file in the snapshot format, from correct records of the same task."""
    seen: set[str] = set()
    with path.open("w") as fh:
        for line in generate_demo_records(n, seed=seed, failure_rate=0.0, malformed=0.0):
            record = json.loads(line)
            if record["record_id"] in seen:  # the generator re-delivers some records, as producers do
                continue
            seen.add(record["record_id"])
            example = {
                "id": record["record_id"],
                "domain": record["domain"],
                "messages": [
                    {"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["output"]},
                ],
            }
            fh.write(json.dumps(example) + "\n")
    return path


def only_version(store: Store) -> ModelVersion:
    with store.session() as session:
        [version] = session.exec(select(ModelVersion)).all()
        return version


def test_finetuning_that_helps_is_promoted_with_a_significant_improvement(
    make_settings: Callable[..., Settings], slack: FakeSlack
) -> None:
    settings = loop_settings(
        make_settings,
        slack={"enabled": True, "bot_token": slack.token, "base_url": slack.base_url},
        # A 0.3 floor for a tiny model trained for 60 steps on CPU (the default 0.5 is for real models).
        evaluation={"min_score": 0.3},
    )
    store = Store(settings.database_url)
    store.migrate()
    try:
        ctx = build_context(settings, store=store)
        ingest_lines(store, generate_demo_records(420, seed=3, malformed=0.0), source="agent")
        [cycle] = run_cycle(ctx, ingest=False)
        print("\n".join(cycle.log))

        assert cycle.outcome.startswith("PROMOTED v1"), cycle.outcome
        version = only_version(store)
        report = version.eval_report
        assert version.status == ModelStatus.PROMOTED and report["verdict"] == "promote"
        assert report["ci_low"] > settings.evaluation.margin  # significant, not merely better on average
        assert report["champion_score"] <= 0.05 and report["candidate_score"] >= 0.2
        assert report["n_items"] >= settings.evaluation.min_items and len(report["per_domain"]) == 5
        with store.session() as session:
            assert registry.alias_target(session, registry.CHAMPION) == "v1"
        assert json.loads(pointer_path(settings).read_text())["adapter"] == "v1"
        posted = "\n".join(str(c.body.get("text")) for c in slack.calls_to("chat.postMessage"))
        assert "Gate: PROMOTED v1" in posted and "CI [" in posted and "python-naming:" in posted
    finally:
        store.close()


def test_poisoned_dataset_is_never_promoted(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """60% of the successful records carry the wrong answer; the base scores 0 on the trusted golden file, so a
    margin alone would promote anything that learned a little: the floor (and the label disagreement) stop it."""
    golden = trusted_golden(tmp_path / "golden.jsonl", n=70, seed=99)
    settings = loop_settings(make_settings, evaluation={"golden_path": golden, "min_items": 20})
    store = Store(settings.database_url)
    store.migrate()
    try:
        ctx = build_context(settings, store=store)
        lines, poisoned, successful = poison(generate_demo_records(420, seed=3, malformed=0.0), fraction=0.6, seed=1)
        assert poisoned >= 0.5 * successful
        ingest_lines(store, lines, source="agent")
        [cycle] = run_cycle(ctx, ingest=False)
        print("\n".join(cycle.log))

        version = only_version(store)
        assert version.status in (ModelStatus.REJECTED, ModelStatus.AWAITING_REVIEW), cycle.outcome
        assert version.eval_report["golden_source"] == str(golden)
        assert version.eval_report["verdict"] != "promote"
        reason = version.eval_report["reason"]
        assert "floor" in reason or "disagree" in reason or "contaminat" in reason, reason
        with store.session() as session:
            assert registry.alias_target(session, registry.CHAMPION) is None
        assert not pointer_path(settings).exists()  # nothing was deployed
    finally:
        store.close()
