"""Code tasks are scored in the sandbox: a record's ``tests`` travel through curation into the snapshot's golden
lines, and evaluation runs each side's code against them (plain items keep normalised exact match).

Generation is stood in for by ``ScriptedGeneration``, a local provider that writes the generation job's output
files from a table (the real job cannot be made to emit a chosen program); everything after it is the real path:
the golden file, ``evaluate_version``, the sandbox, the gate and the stored record.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.common import read_jsonl
from pilot.context import PilotContext, build_context
from pilot.evaluation.evaluate import EvaluationError, evaluate_version, score_items
from pilot.settings import Settings
from pilot.store import Store
from subagents.data.curate import CurationConfig, curate
from subagents.data.schema import parse_jsonl_line
from subagents.data.snapshot import read_manifest, write_snapshot
from tests.pilot.test_efficacy_rollback import add_version
from tests.subagents.data.data_factories import line, record
from tools.gpu.base import Instance, LaunchSpec
from tools.gpu.local import LocalGpuProvider
from tools.sandbox import SandboxLimits

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=2, memory_mb=256, max_processes=16)

SQUARE_TESTS = (
    "from solution import square\n\nassert square(3) == 9\n\ndef test_negative():\n    assert square(-4) == 16\n"
)
RIGHT = "```python\ndef square(x):\n    return x * x\n```"
WRONG = "```python\ndef square(x):\n    return x + x\n```"
READS_ENV = "import os\n\ndef square(x):\n    return int(os.environ['LP_EVAL_SECRET']) and x * x\n"
LOOPS = "def square(x):\n    while True:\n        pass\n"


def connects(port: int) -> str:
    """Code that phones home at import and only then defines a right answer: blocked, so it fails."""
    return (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "def square(x):\n    return x * x\n"
    )


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A loopback TCP listener that records whatever reaches it."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                received.append(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def golden_line(item_id: str, prompt: str, answer: str, *, tests: str = "", domain: str = "code") -> str:
    row: dict[str, object] = {
        "id": item_id,
        "domain": domain,
        "weight": 1.0,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
    }
    if tests:
        row["tests"] = tests
    return json.dumps(row)


class ScriptedGeneration(LocalGpuProvider):
    """The generation job's stand-in: writes ``answers[side]`` as predictions (the candidate is the run with an
    adapter under ``candidate-adapter``), then runs a no-op process so launch/poll/terminate stay real."""

    def __init__(self, root: Path, answers: dict[str, dict[str, str]]) -> None:
        super().__init__(root)
        self.answers = answers

    def launch(self, spec: LaunchSpec) -> Instance:
        config = json.loads(Path(spec.command[spec.command.index("--config") + 1]).read_text())
        side = "candidate" if config["adapter"] and "candidate-adapter" in config["adapter"] else "champion"
        rows = [{"id": i, "prediction": p, "loss": 1.0} for i, p in self.answers[side].items()]
        out = Path(config["output_file"])
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        Path(f"{out}.summary.json").write_text(json.dumps({"items": len(rows), "eval_loss": 1.0}))
        return super().launch(replace(spec, command=[sys.executable, "-c", "pass"]))


def context(settings: Settings, store: Store, answers: dict[str, dict[str, str]]) -> PilotContext:
    ctx = build_context(settings, store=store)
    return replace(ctx, local=ScriptedGeneration(Path(settings.data_dir) / "scripted-gpu", answers))


# ------------------------------------------------------------------------------------------ scoring


def test_code_items_run_in_the_sandbox_and_hostile_code_scores_zero(
    listener: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = listener
    monkeypatch.setenv("LP_EVAL_SECRET", "7")
    items = [
        {"id": name, "domain": "code", "ref": RIGHT, "prompt": "Write square(x).", "tests": SQUARE_TESTS}
        for name in ("right", "wrong", "env", "socket", "loop")
    ]
    items.append({"id": "plain", "domain": "naming", "ref": "user_id", "prompt": "snake_case userId", "tests": ""})
    candidate = {
        "right": RIGHT,
        "wrong": WRONG,
        "env": READS_ENV,
        "socket": connects(port),
        "loop": LOOPS,
        "plain": "`user_id`",
    }
    champion = {"right": WRONG, "wrong": RIGHT, "env": RIGHT, "socket": RIGHT, "loop": RIGHT}  # "plain": missing

    scores, summary = score_items(items, candidate, champion, limits=FAST)

    by_id = {s.id: s for s in scores}
    assert {i: (s.mode, s.candidate, s.champion) for i, s in by_id.items()} == {
        "right": ("code", 1.0, 0.0),
        "wrong": ("code", 0.0, 1.0),
        "env": ("code", 0.0, 1.0),
        "socket": ("code", 0.0, 1.0),
        "loop": ("code", 0.0, 1.0),
        "plain": ("exact", 1.0, 0.0),
    }
    assert "killed" in by_id["loop"].candidate_detail  # CPU or wall-clock limit, then a group kill
    assert by_id["right"].candidate_detail == "all tests passed"
    assert "tests failed" in by_id["env"].candidate_detail
    assert received == []  # nothing reached the listener
    assert summary["modes"] == {"code": 5, "exact": 1}
    sandbox = summary["sandbox"]
    assert sandbox["runs"] == 10 and sandbox["passed"] == 5
    assert sandbox["limits"]["wall_seconds"] == 2
    assert sandbox["network_isolated"] is (sandbox["runs_without_network_isolation"] == 0)


def test_an_empty_answer_to_a_code_item_scores_zero_without_running() -> None:
    items = [{"id": "a", "domain": "code", "ref": RIGHT, "prompt": "p", "tests": SQUARE_TESTS}]
    scores, summary = score_items(items, {"a": "   "}, {"a": RIGHT}, limits=FAST)
    assert (scores[0].candidate, scores[0].champion) == (0.0, 1.0)
    assert scores[0].candidate_detail.startswith("empty answer")
    assert summary["sandbox"]["runs"] == 1


def test_without_isolation_code_items_are_not_evaluated_and_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No bwrap on this PATH (as on a host without it): the sandbox refuses, the items are not scored at all (not
    0 for both sides), and the record lists them; the verdict then goes to a human (evaluate_version)."""
    from tools.sandbox import probe_isolation

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("shutil.which", lambda *_a, **_k: None)
    probe_isolation.cache_clear()
    try:
        items = [
            {"id": "a", "domain": "code", "ref": RIGHT, "prompt": "p", "tests": SQUARE_TESTS},
            {"id": "b", "domain": "d", "ref": "x", "prompt": "p", "tests": ""},
        ]
        scores, summary = score_items(items, {"a": RIGHT, "b": "x"}, {"a": WRONG, "b": "y"}, limits=FAST)
    finally:
        probe_isolation.cache_clear()
    assert [s.id for s in scores] == ["b"]  # the code item is not scored
    assert summary["sandbox"]["not_evaluated"] == 2 and summary["sandbox"]["not_evaluated_items"] == ["a"]
    assert summary["sandbox"]["runs"] == 0  # nothing ran unisolated


def test_no_code_items_means_no_sandbox_section() -> None:
    items = [{"id": "a", "domain": "d", "ref": "x", "prompt": "p", "tests": ""}]
    scores, summary = score_items(items, {"a": "x"}, {"a": "y"})
    assert [(s.mode, s.candidate, s.champion) for s in scores] == [("exact", 1.0, 0.0)]
    assert summary["modes"] == {"code": 0, "exact": 1} and "sandbox" not in summary


# --------------------------------------------------------------------------------------- evaluation


def test_evaluate_version_mixes_code_and_plain_items_and_stores_the_modes(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    lines, cand, champ = [], {}, {}
    for i in range(12):  # code items: the candidate is right on all, the base model on a third
        lines.append(golden_line(f"c{i}", f"Write square(x), variant {i}.", RIGHT, tests=SQUARE_TESTS))
        cand[f"c{i}"] = RIGHT if i else f"Sure! Here it is:\n{RIGHT}\nHope it helps."  # prose around the fence
        champ[f"c{i}"] = RIGHT if i % 3 == 0 else (LOOPS if i == 1 else WRONG)
    for i in range(10):  # plain items, scored by exact match: both sides equal
        lines.append(golden_line(f"p{i}", f"Rename userId{i} to snake_case.", f"user_id{i}", domain="naming"))
        cand[f"p{i}"] = champ[f"p{i}"] = f"user_id{i}"
    golden = tmp_path / "golden.jsonl"
    golden.write_text("\n".join(lines) + "\n")
    settings = make_settings(evaluation={"golden_path": golden, "min_items": 10, "bootstrap_samples": 200})
    ctx = context(settings, store, {"candidate": cand, "champion": champ})
    add_version(ctx, "v1", tmp_path)

    report, stored = evaluate_version(ctx, "v1", sandbox_limits=FAST)

    assert stored["scoring_modes"] == {"code": 12, "exact": 10}
    modes = {row["id"]: row["mode"] for row in stored["items"]}
    assert modes["c0"] == "code" and modes["p0"] == "exact" and len(modes) == 22
    assert report.per_domain["code"].candidate == 1.0
    assert report.per_domain["code"].champion == pytest.approx(4 / 12)
    assert report.per_domain["naming"].diff == 0.0
    assert report.candidate_score == 1.0 and report.champion_score == pytest.approx(14 / 22)
    c1 = next(row for row in stored["items"] if row["id"] == "c1")
    assert c1["candidate"] == 1.0 and c1["champion"] == 0.0 and "killed" in c1["champion_detail"]
    assert stored["sandbox"]["runs"] == 24 and stored["sandbox"]["passed"] == 16
    assert "sandbox" in stored["scoring"] and stored["judge"] is None  # the judge is off by default
    json.dumps(stored)  # the record is stored as JSON


def test_tests_that_are_not_text_stop_the_evaluation(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    golden = tmp_path / "golden.jsonl"
    bad = json.loads(golden_line("c0", "Write square(x).", RIGHT))
    bad["tests"] = ["assert True"]
    golden.write_text(json.dumps(bad) + "\n")
    ctx = context(make_settings(evaluation={"golden_path": golden}), store, {"candidate": {}, "champion": {}})
    add_version(ctx, "v1", tmp_path)
    with pytest.raises(EvaluationError, match="'tests' must be a string"):
        evaluate_version(ctx, "v1", sandbox_limits=FAST)


# ------------------------------------------------------------------------------------ curation path


def test_record_tests_reach_the_golden_line_scrubbed_and_the_jobs_reader_accepts_them(tmp_path: Path) -> None:
    secret_tests = SQUARE_TESTS + "API_KEY = 'sk-proj-" + "a1B2c3D4" * 6 + "'\n"
    records = [
        record(
            record_id=f"r{i}",
            prompt=f"Write square(x) for case {i}.",
            output=RIGHT,
            domain="code",
            tests=secret_tests,
        )
        for i in range(40)
    ]
    records.append(record(record_id="plain", prompt="Rename `userIdMap` to snake_case."))
    result = curate(records, CurationConfig(near_dup_threshold=1.0))  # the variants are near duplicates
    manifest = write_snapshot(result, tmp_path / "snap", source={"test": True})

    with_tests = [e for s in ("train", "eval", "golden") for e in result.split(s) if e.tests]
    assert len(with_tests) == 40 and all("sk-proj-" not in e.tests for e in with_tests)
    assert all("<REDACTED:" in e.tests and "from solution import square" in e.tests for e in with_tests)
    assert manifest.scrubbed  # the scrubbed secret is counted
    assert (
        read_manifest(tmp_path / "snap").with_tests
        == manifest.with_tests
        == {s: sum(1 for e in result.split(s) if e.tests) for s in ("train", "eval", "golden")}
    )
    assert manifest.with_tests["golden"] > 0
    plain = next(e for s in ("train", "eval", "golden") for e in result.split(s) if e.record_id == "plain")
    assert "tests" not in json.loads(plain.to_json())  # no key: lines without tests are byte-identical to before

    golden_rows = read_jsonl(tmp_path / "snap" / "golden.jsonl")
    assert golden_rows and all("tests" in row for row in golden_rows if row["domain"] == "code")
    from jobs.generate import split_item  # imports torch: only here

    item_id, prompt, full = split_item(golden_rows[0], 0)
    assert item_id == golden_rows[0]["id"] and prompt[-1]["role"] == "user" and full[-1]["role"] == "assistant"


def test_tests_field_is_optional_bounded_and_outside_the_content_hash() -> None:
    from subagents.data.schema import MAX_TEXT_BYTES, RecordError, content_hash

    plain = record()
    assert plain.tests == ""
    with_tests = record(tests=SQUARE_TESTS)
    assert content_hash(with_tests) == content_hash(plain)
    assert parse_jsonl_line(line(tests=SQUARE_TESTS)).tests == SQUARE_TESTS
    with pytest.raises(RecordError, match="tests"):
        record(tests="x" * (MAX_TEXT_BYTES + 1))
    with pytest.raises(RecordError, match="tests"):
        record(tests=["assert True"])
