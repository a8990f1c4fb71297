"""Evaluation: the candidate and the champion (or the base model) answer the frozen golden split; the daemon
scores their outputs itself and applies the paired gate.

Scoring, per item, the same way for both sides: an item whose golden line carries ``tests`` (test code the
product ran, a code task) is scored by running the extracted code against those tests in the sandbox
(tools/sandbox.py: no environment, no network, rlimits, wall clock, process-group kill), 1.0 only when every test
ran and passed; any other item by normalised exact match with the reference. The stored record names each item's
mode and the counts per mode. The sandbox fails closed (tools/sandbox.py, docs/sandbox.md): when isolation
(network, filesystem, no secrets) cannot be established it runs nothing, those items are "not evaluated" (left out
of the scores, listed in the record) and the verdict is "inconclusive" so a human reviews: a code item is never
run unisolated nor silently scored another way.

The optional LLM judge (``evaluation.judge``, subagents/judge.py) grades both sides' answers with a fixed rubric,
k samples each; its scores and agreement are stored beside the deterministic ones and the gate does not read
them: a sampled model's opinion must not be able to promote or block a model. Every judge call's cost goes to the
ledger (category ``llm``) and its tokens to an ``llm_call`` event, so the daily LLM budget counts them; when that
budget runs out the judge stops and the record says after how many items. A judge that fails never fails the
evaluation.

No number the training job reports about itself enters the verdict: the generation job only returns predictions
and per-item reference losses, for both sides alike; the eval loss is their mean, computed here (``read_predictions``).

Where generation runs (``evaluation.where``, ``pilot.evaluation.remote.evaluates_remotely``): on this machine through
``ctx.local``, or, for large models on a rented provider, as a stage on its own short rented instance
(pilot/evaluation/remote.py: reserved on the ledger before renting, always destroyed and verified gone, settled with the
provider's charges) whose uploaded predictions are sha256-checked and scored here exactly as local ones. The record
says which (``where``, ``remote_stage``). Adapters are fetched from the artifact store and verified
(every file's sha256, safetensors/json only: pickled weights are refused) before anything loads them; a refused
adapter is an ``IntegrityError`` and the graph rejects the candidate.

The golden set is ``evaluation.golden_path`` when configured (a trusted, curated file), else the candidate
snapshot's golden split. Only a trusted file protects against poisoned records: a split drawn from the same
records carries the same wrong labels. The stored record names the golden source, its sha256, and how many of
its prompts also appear in the candidate's training split (contamination inflates the candidate's score).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pilot.context import PilotContext
from pilot.evaluation.judging import judge_answers
from pilot.evaluation.predictions import EvaluationError, read_predictions
from pilot.serving.registry import CHAMPION, get_version
from pilot.store.models import DatasetSnapshot, ModelVersion
from pilot.store.writers import alias_target
from subagents.data.clusters import file_contamination, file_label_disagreement
from subagents.data.split import split_key
from subagents.evaluation import GateConfig, GateReport, PairedItem, compare, extract_code, score_normalised
from subagents.lengths import generation_report
from tools.artifacts.base import sha256_file
from tools.errors import IntegrityError
from tools.gpu.base import InstanceState, LaunchSpec
from tools.sandbox import SandboxLimits, probe_isolation, run_python
from tools.serving.base import verify_adapter_dir

if TYPE_CHECKING:
    from subagents.judge import Completer

logger = logging.getLogger(__name__)


# Each side's code answer gets at most this; a golden set of n code items costs at most 2 * n * wall_seconds.
SANDBOX_LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=10, memory_mb=512, file_size_mb=16, max_processes=64)

Mode = Literal["code", "exact"]


@dataclass(frozen=True)
class ItemScore:
    """One golden item scored for both sides; ``*_detail`` is the sandbox's one-line account for code items."""

    id: str
    domain: str
    mode: Mode
    candidate: float
    champion: float
    candidate_detail: str = ""
    champion_detail: str = ""


def fetch_adapter(ctx: PilotContext, version: ModelVersion, dest: Path) -> Path:
    """Copy a version's adapter files out of the artifact store and verify the directory exactly as a deploy
    target would (sha256 of every file, safetensors weights, nothing pickled). Raises ``IntegrityError``."""
    if not version.adapter_files:
        raise IntegrityError(f"model version {version.id} has no stored adapter files")
    expected: dict[str, str] = {}
    for name, ref in sorted(version.adapter_files.items()):
        ctx.artifacts.get(str(ref["key"]), dest / name, sha256=str(ref["sha256"]))
        expected[name] = str(ref["sha256"])
    verify_adapter_dir(dest, expected)
    return dest


def _generate(
    ctx: PilotContext, *, adapter: Path | None, golden: Path, golden_ids: list[str], out: Path, label: str
) -> dict[str, Any]:
    """jobs.generate for one side on this machine (``ctx.local``); its predictions read as a remote host's are."""
    settings = ctx.settings
    config = {
        "base_model": settings.training.base_model,
        "adapter": str(adapter) if adapter else None,
        "input_file": str(golden),
        "output_file": str(out),
        "max_new_tokens": settings.evaluation.max_new_tokens,
        "batch_size": settings.evaluation.batch_size,
    }
    config_path = out.with_suffix(".config.json")
    config_path.write_text(json.dumps(config, indent=2))
    spec = LaunchSpec(
        label=label,
        offer_id=None,
        image="local",
        command=[sys.executable, "-m", "jobs.generate", "--config", str(config_path)],
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    instance = ctx.local.launch(spec)
    try:
        while (state := ctx.local.poll(instance.id)).state is InstanceState.RUNNING:
            time.sleep(0.2)
        if state.exit_code != 0:
            tail = ctx.local.logs(instance.id, tail=5)
            raise EvaluationError(f"generation for {label} exited with {state.exit_code}: {tail[-500:]}")
    finally:
        ctx.local.terminate(instance.id)
    if not out.is_file():
        raise EvaluationError(f"generation for {label} wrote no predictions")
    predictions, eval_loss = read_predictions(out, golden_ids)
    return {"predictions": predictions, "eval_loss": eval_loss}


def _golden_items(golden: Path) -> list[dict[str, Any]]:
    """The golden items; a malformed file (bad JSON, no assistant answer, a repeated id) is an EvaluationError
    naming the line: a gate must not run on a set it cannot read exactly."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    with golden.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                reference = next(m["content"] for m in reversed(example["messages"]) if m["role"] == "assistant")
                prompt = next((m["content"] for m in reversed(example["messages"]) if m["role"] == "user"), "")
                item_id = str(example["id"])
                tests = example.get("tests", "")
            except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as exc:
                raise EvaluationError(f"{golden}:{number}: not a golden example ({exc!r})") from exc
            if not isinstance(tests, str):
                raise EvaluationError(f"{golden}:{number}: 'tests' must be a string of test code")
            if item_id in seen:
                raise EvaluationError(f"{golden}:{number}: id {item_id!r} appears twice")
            seen.add(item_id)
            items.append(
                {
                    "id": item_id,
                    "domain": example.get("domain", "default"),
                    "ref": str(reference),
                    "prompt": str(prompt),
                    "tests": tests,
                }
            )
    return items


def _prompts(path: Path) -> set[str]:
    keys = set()
    if path.is_file():
        with path.open() as fh:
            for line in fh:
                if line.strip():
                    example = json.loads(line)
                    prompt = next((m["content"] for m in example["messages"] if m["role"] == "user"), "")
                    keys.add(split_key(str(prompt)))
    return keys


def _train_overlap(train: Path, golden: Path) -> int:
    """Golden prompts that the candidate also trained on (by the split key: case and spacing folded)."""
    return len(_prompts(train) & _prompts(golden))


def gate_config(ctx: PilotContext) -> GateConfig:
    e = ctx.settings.evaluation
    return GateConfig(
        margin=e.margin,
        max_domain_regression=e.max_domain_regression,
        confidence=e.confidence,
        bootstrap_samples=e.bootstrap_samples,
        max_eval_loss_increase=e.max_eval_loss_increase,
        min_items=e.min_items,
        min_score=e.min_score,
        min_domain_score=e.min_domain_score,
        domain_floors=dict(e.domain_floors),
        max_contamination=e.max_golden_contamination,
        max_label_disagreement=e.max_label_disagreement,
    )


def score_items(
    items: Sequence[Mapping[str, Any]],
    candidate: Mapping[str, str],
    champion: Mapping[str, str],
    *,
    limits: SandboxLimits = SANDBOX_LIMITS,
) -> tuple[list[ItemScore], dict[str, Any]]:
    """Score both sides' predictions (``id -> answer``; a missing answer is empty) item by item: code items in
    the sandbox, others by normalised exact match. Returns the scores and the scoring summary for the record.
    Raises ``EvaluationError`` when the sandbox itself cannot be set up."""
    scores: list[ItemScore] = []
    modes: Counter[str] = Counter()
    sandbox: Counter[str] = Counter()
    sandbox_s = 0.0
    not_evaluated: set[str] = set()
    for item in items:
        answers = (candidate.get(item["id"], ""), champion.get(item["id"], ""))
        tests = str(item.get("tests") or "")
        if not tests.strip():
            modes["exact"] += 1
            c, h = (score_normalised(a, str(item["ref"])) for a in answers)
            scores.append(ItemScore(str(item["id"]), str(item["domain"]), "exact", c, h))
            continue
        modes["code"] += 1
        sides: list[tuple[float, str]] = []
        for answer in answers:
            code = extract_code(answer)
            if not code.strip():
                sides.append((0.0, "empty answer: nothing to run"))
                continue
            result = run_python(code, tests, limits)
            if not result.evaluated:  # fail closed: no isolation, nothing run; a human decides
                sandbox["not_evaluated"] += 1
                not_evaluated.add(str(item["id"]))
                sides.append((0.0, result.detail[:300]))
                continue
            sandbox["runs"] += 1
            sandbox["passed"] += result.passed
            sandbox["timed_out"] += result.timed_out
            sandbox["killed"] += result.killed
            sandbox["without_network_isolation"] += not result.network_isolated
            sandbox_s += result.duration_s
            sides.append((1.0 if result.passed else 0.0, result.detail[:300]))
        (c, c_detail), (h, h_detail) = sides
        if str(item["id"]) in not_evaluated:
            continue  # not scored at all: a 0 for both sides would be a verdict the sandbox never reached
        scores.append(ItemScore(str(item["id"]), str(item["domain"]), "code", c, h, c_detail, h_detail))
    summary: dict[str, Any] = {
        "method": "code items (golden lines with tests): the answer's code run against the item's tests in the "
        "sandbox, 1 only when every test ran and passed; other items: normalised exact match; scored by the daemon",
        "modes": {"code": modes["code"], "exact": modes["exact"]},
    }
    if modes["code"]:
        runs = sandbox["runs"]
        summary["sandbox"] = {
            "runs": runs,
            "passed": sandbox["passed"],
            "timed_out": sandbox["timed_out"],
            "killed": sandbox["killed"],
            "runs_without_network_isolation": sandbox["without_network_isolation"],
            "network_isolated": sandbox["without_network_isolation"] == 0,
            "not_evaluated": sandbox["not_evaluated"],
            "not_evaluated_items": sorted(not_evaluated),
            "duration_s": round(sandbox_s, 2),
            "limits": asdict(limits),
        }
        if sandbox["without_network_isolation"]:
            logger.warning(
                "%d sandbox runs had network access: this machine refused a network namespace",
                sandbox["without_network_isolation"],
            )
    return scores, summary


# ------------------------------------------------------------------------------------------ the evaluation


@dataclass
class Prepared:
    """What both sides are evaluated on, read and verified before anything generates (or is rented)."""

    version: ModelVersion
    champion: ModelVersion | None
    snapshot: DatasetSnapshot | None
    trusted: Path | None
    golden: Path
    items: list[dict[str, Any]]
    overlap: int
    contaminated: Any
    disagreement: Any
    workdir: Path
    candidate_adapter: Path | None  # None when not fetched
    champion_adapter: Path | None
    started: float

    @property
    def golden_ids(self) -> list[str]:
        return [str(i["id"]) for i in self.items]

    @property
    def adapters(self) -> dict[Literal["candidate", "champion"], Mapping[str, Any] | None]:
        """Each side's stored adapter files (None for the base model), for a remote stage."""
        champion = self.champion.adapter_files if self.champion is not None else None
        return {"candidate": self.version.adapter_files, "champion": champion}


def prepare_evaluation(ctx: PilotContext, version_id: str, *, fetch_adapters: bool = True) -> Prepared:
    """The golden set, its contamination and label checks, and both adapters fetched and verified (``fetch_adapters``:
    False to score a remote stage's predictions, whose adapters were verified before it was rented)."""
    with ctx.store.session() as session:
        version = get_version(session, version_id)
        snapshot = session.get(DatasetSnapshot, version.snapshot_id) if version.snapshot_id else None
        champion_id = alias_target(session, CHAMPION)
        champion = get_version(session, champion_id) if champion_id and champion_id != version_id else None
    trusted = ctx.settings.evaluation.golden_path
    golden = trusted if trusted is not None else Path(snapshot.path) / "golden.jsonl" if snapshot else None
    if golden is None or not golden.is_file():
        raise EvaluationError(f"{version_id} has no golden set to be evaluated on ({golden or 'no snapshot'})")
    started = time.monotonic()
    items = _golden_items(golden)
    overlap = _train_overlap(Path(snapshot.path) / "train.jsonl", golden) if snapshot is not None else 0
    train_file = Path(snapshot.path) / "train.jsonl" if snapshot is not None else None
    contaminated = file_contamination(golden, train_file) if train_file and train_file.is_file() else None
    disagreement = (
        file_label_disagreement(golden, train_file)
        if trusted is not None and train_file is not None and train_file.is_file()
        else None
    )
    workdir = ctx.settings.work_dir / "eval" / version_id
    workdir.mkdir(parents=True, exist_ok=True)
    # Both adapters are verified here before anything runs (and before anything is rented for a remote stage).
    cand_adapter = fetch_adapter(ctx, version, workdir / "candidate-adapter") if fetch_adapters else None
    champ_adapter = fetch_adapter(ctx, champion, workdir / "champion-adapter") if champion and fetch_adapters else None
    return Prepared(
        version,
        champion,
        snapshot,
        trusted,
        golden,
        items,
        overlap,
        contaminated,
        disagreement,
        workdir,
        cand_adapter,
        champ_adapter,
        started,
    )


def evaluate_version(
    ctx: PilotContext,
    version_id: str,
    *,
    sandbox_limits: SandboxLimits = SANDBOX_LIMITS,
    judge_client: Completer | None = None,
    lease: str | None = None,
) -> tuple[GateReport, dict[str, Any]]:
    """Run both sides on the golden split, score, gate, in this process. Returns the report and the stored
    evaluation record. (The supervisor does not wait here for a remote stage: its ``evaluate`` node opens the stage
    and ``score_evaluation`` reads it once a worker drove it to its end.)

    ``lease``: the supervisor thread's lease, which the effect gate checks before an evaluation host is rented.

    ``judge_client`` replaces the judge's model built from the settings (tests: litellm's ``mock_response``); the
    judge runs only when ``evaluation.judge.enabled``."""
    prep = prepare_evaluation(ctx, version_id)
    from pilot.evaluation import remote as remote_eval  # the rented-host stage loads only when configured

    if remote_eval.evaluates_remotely(ctx.settings):
        generated = remote_eval.generate_remote(
            ctx,
            version_id=version_id,
            golden=prep.golden,
            golden_ids=prep.golden_ids,
            adapters=prep.adapters,
            lease=lease,
        )
    else:
        generated = {
            side: _generate(
                ctx,
                adapter=adapter,
                golden=prep.golden,
                golden_ids=prep.golden_ids,
                out=prep.workdir / f"{side}.jsonl",
                label=ctx.instance_label(f"eval-{version_id}-{side}"[:40]),
            )
            for side, adapter in (("candidate", prep.candidate_adapter), ("champion", prep.champion_adapter))
        }
    return score_evaluation(ctx, prep, generated, sandbox_limits=sandbox_limits, judge_client=judge_client)


def score_evaluation(
    ctx: PilotContext,
    prep: Prepared,
    generated: Mapping[str, Any],
    *,
    sandbox_limits: SandboxLimits = SANDBOX_LIMITS,
    judge_client: Completer | None = None,
) -> tuple[GateReport, dict[str, Any]]:
    """Score both sides' predictions (``generated``: ``candidate``, ``champion`` and, for a remote stage, ``stage``)
    and gate. Returns the report and the evaluation record to store."""
    version_id, items, champion, snapshot = prep.version.id, prep.items, prep.champion, prep.snapshot
    cand, champ, stage = generated["candidate"], generated["champion"], generated.get("stage")
    golden, trusted, contaminated, disagreement = prep.golden, prep.trusted, prep.contaminated, prep.disagreement
    overlap, started = prep.overlap, prep.started
    cand_answers = {k: str(v.get("prediction") or "") for k, v in cand["predictions"].items()}
    champ_answers = {k: str(v.get("prediction") or "") for k, v in champ["predictions"].items()}
    scores, scoring = score_items(items, cand_answers, champ_answers, limits=sandbox_limits)
    report = compare(
        [PairedItem(id=s.id, domain=s.domain, candidate=s.candidate, champion=s.champion) for s in scores],
        candidate_eval_loss=cand.get("eval_loss"),
        champion_eval_loss=champ.get("eval_loss"),
        config=gate_config(ctx),
        contamination=contaminated.share if contaminated is not None else None,
        label_disagreement=disagreement.share if disagreement is not None and disagreement.matched else None,
    )
    skipped = scoring.get("sandbox", {}).get("not_evaluated_items") or []
    if skipped:  # the sandbox could not isolate untrusted code: no automatic verdict, a human reviews
        why = probe_isolation().reason or "the sandbox is degraded"
        report = dataclasses.replace(
            report,
            verdict="inconclusive",
            reason=f"{len(skipped)} code item(s) were not evaluated: untrusted code runs only when isolation holds "
            f"({why}); a human decides. {report.reason}",
        )
    judged, judge = judge_answers(ctx, version_id, items, cand_answers, champ_answers, judge_client)
    per_item = []
    for score in scores:
        row: dict[str, Any] = {
            "id": score.id,
            "domain": score.domain,
            "mode": score.mode,
            "candidate": score.candidate,
            "champion": score.champion,
        }
        if score.mode == "code":
            row["candidate_detail"], row["champion_detail"] = score.candidate_detail, score.champion_detail
        if score.id in judged:
            row["judge"] = judged[score.id]
        per_item.append(row)
    if judge is not None and judged:
        # How often the judge's verdict matches the deterministic score: a low figure says the judge (or the
        # exact-match references) should not be trusted for this golden set.
        same = sum(
            (s.candidate == judged[s.id]["candidate"]) + (s.champion == judged[s.id]["champion"])
            for s in scores
            if s.id in judged
        )
        judge["agreement_with_scores"] = same / (2 * len(judged))
    examples = [
        {
            "id": i["id"],
            "ref": i["ref"],
            "candidate": cand["predictions"].get(i["id"], {}).get("prediction"),
            "champion": champ["predictions"].get(i["id"], {}).get("prediction"),
        }
        for i in items[:5]
    ]
    record = {
        **report.to_dict(),
        "champion_version": champion.id if champion else None,
        "champion_label": champion.id if champion else f"base ({ctx.settings.training.base_model})",
        "golden_snapshot": snapshot.id if snapshot else None,
        "golden_source": str(golden) if trusted is not None else "snapshot golden split",
        "golden_sha256": sha256_file(golden),
        "golden_items": len(items),
        "golden_prompts_in_train": overlap,
        "golden_contamination": None
        if contaminated is None
        else {"share": contaminated.share, "items": contaminated.contaminated, "ids": list(contaminated.ids)},
        "label_disagreement": None
        if disagreement is None
        else {"share": disagreement.share, "matched": disagreement.matched, "ids": list(disagreement.ids)},
        "generation_lengths": generation_report(
            [str(i["ref"]) for i in items],
            ctx.settings.evaluation.max_new_tokens,
            max_share=ctx.settings.evaluation.max_truncated_share,
        ).to_dict(),
        "confidence": ctx.settings.evaluation.confidence,
        "scoring": scoring["method"],
        "scoring_modes": scoring["modes"],
        "sandbox": scoring.get("sandbox"),
        "items": per_item,
        "judge": judge,
        "examples": examples,
        "where": "remote" if stage is not None else "local",
        "remote_stage": stage,
        "eval_loss_source": "mean of the per-item reference losses, computed by the daemon",
        "duration_s": round(time.monotonic() - started + (stage or {}).get("duration_s", 0.0), 2),
    }
    judged_line = ""
    if judge is not None and judge.get("candidate_score") is not None:
        judged_line = f"; judge {judge['candidate_score']:.3f} vs {judge['champion_score']:.3f} (advice only)"
    logger.info(
        "Evaluated %s: %s (%s); %d code items in the sandbox, %d by exact match%s",
        version_id,
        report.verdict,
        report.reason,
        scoring["modes"]["code"],
        scoring["modes"]["exact"],
        judged_line,
    )
    return report, record
