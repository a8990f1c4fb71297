"""The knowledge base on a real in-memory Qdrant with the hashing embedder (the ONNX one: test_knowledge_onnx.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from tools.knowledge import (
    EmbedderUnavailable,
    FastEmbedEmbedder,
    HashingEmbedder,
    Hit,
    KnowledgeBase,
    KnowledgeError,
    Solution,
    check_model_dir,
    format_for_prompt,
    open_qdrant,
    point_id,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def solution(key: str, task: str, **overrides: Any) -> Solution:
    values: dict[str, Any] = {
        "key": key,
        "task": task,
        "solution": f"def fix_{key}():\n    return 42\n",
        "domain": "python",
        "success_rate": 1.0,
        "time": T0,
        "tags": ("lint",),
        "model_version": "v1",
        "record_id": f"rec-{key}",
    }
    values.update(overrides)
    return Solution(**values)


TASKS = [
    ("a", "rename the variable user_count to num_users in the billing module"),
    ("b", "fix the flaky timeout in the websocket reconnect test"),
    ("c", "add type hints to the csv parser functions"),
    ("d", "upgrade the postgres driver and fix the connection pool warning"),
    ("e", "write a sql migration adding an index on orders created_at"),
]


@pytest.fixture
def kb() -> KnowledgeBase:
    return KnowledgeBase(QdrantClient(":memory:"), HashingEmbedder(64), "solutions")


def test_hashing_embedder_is_deterministic_normalised_and_topical() -> None:
    emb = HashingEmbedder(128)
    vecs = emb.embed_documents(["fix the websocket timeout", "fix the websocket timeout", "banana bread recipe", ""])
    assert vecs.shape == (4, 128) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(vecs[0], vecs[1])
    close = float(vecs[0] @ emb.embed_query("websocket timeout fix"))
    far = float(vecs[0] @ vecs[2])
    assert close > 0.5 > far
    assert emb.embed_documents([]).shape == (0, 128)
    with pytest.raises(ValueError):
        HashingEmbedder(4)


def test_search_ranks_the_matching_task_first_and_returns_its_payload(kb: KnowledgeBase) -> None:
    assert kb.upsert_solutions(solution(k, t) for k, t in TASKS) == 5
    assert kb.count() == 5
    hits = kb.search("websocket reconnect test is flaky with a timeout", top_k=3)
    assert len(hits) == 3
    assert hits[0].solution.key == "b"
    assert hits[0].score > hits[1].score
    top = hits[0].solution
    assert top == solution("b", TASKS[1][1])  # the payload round-trips to the same value
    assert top.time == T0 and top.tags == ("lint",) and top.model_version == "v1"


def test_upsert_is_idempotent_by_key_and_updates_the_payload(kb: KnowledgeBase) -> None:
    kb.upsert_solutions([solution("a", TASKS[0][1]), solution("a", TASKS[0][1], success_rate=0.5)])
    kb.upsert_solutions([solution("a", TASKS[0][1], success_rate=0.75, reports=4)])
    assert kb.count() == 1
    [hit] = kb.search(TASKS[0][1], top_k=5)
    assert hit.solution.success_rate == 0.75 and hit.solution.reports == 4
    assert point_id("a") == point_id("a") != point_id("b")


def test_upsert_in_several_batches(kb: KnowledgeBase) -> None:
    items = [solution(f"k{n}", f"task number {n} about topic {n % 7}") for n in range(25)]
    assert kb.upsert_solutions(iter(items), batch_size=4) == 25
    assert kb.count() == 25


def test_min_success_rate_and_domain_filter(kb: KnowledgeBase) -> None:
    kb.upsert_solutions(
        [
            solution("low", "fix the websocket timeout", success_rate=0.2),
            solution("mid", "fix the websocket timeout in tests", success_rate=0.6, domain="js"),
            solution("high", "websocket timeout fix for reconnect", success_rate=0.95),
        ]
    )
    keys = {h.solution.key for h in kb.search("websocket timeout", top_k=10, min_success_rate=0.5)}
    assert keys == {"mid", "high"}
    assert [h.solution.key for h in kb.search("websocket timeout", top_k=10, domain="js")] == ["mid"]
    assert kb.search("websocket timeout", top_k=10, min_success_rate=0.99) == []
    assert kb.search("   ", top_k=3) == []
    with pytest.raises(ValueError):
        kb.search("x", top_k=0)


def test_collection_of_another_size_is_refused() -> None:
    client = QdrantClient(":memory:")
    KnowledgeBase(client, HashingEmbedder(64), "sol").upsert_solutions([solution("a", "x")])
    other = KnowledgeBase(client, HashingEmbedder(32), "sol")
    with pytest.raises(KnowledgeError, match="64-d vectors"):
        other.count()


def test_format_for_prompt_lists_hits_with_metadata_and_truncates() -> None:
    long = solution("b", "fix the timeout", solution="x" * 50, success_rate=0.876, tags=("net", "tests"))
    text = format_for_prompt(
        [Hit(0.91, long), Hit(0.5, solution("c", "add hints", model_version=None))], max_chars_per_solution=10
    )
    assert text.startswith("Solutions that worked for similar tasks before")
    assert "### 1. fix the timeout" in text and "### 2. add hints" in text
    assert "success 87%" in text and "model v1" in text and "tags net, tests" in text and "similarity 0.91" in text
    assert "x" * 10 + "\n[... truncated]" in text and "x" * 11 not in text
    assert format_for_prompt([]) == ""


def test_local_mode_persists_and_a_second_client_gets_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "qdrant"
    client = open_qdrant(path=folder)
    try:
        KnowledgeBase(client, HashingEmbedder(32)).upsert_solutions([solution("a", "persist me")])
        with pytest.raises(KnowledgeError, match="in use by another client"):
            open_qdrant(path=folder)
    finally:
        client.close()
    reopened = open_qdrant(path=folder)
    try:
        assert KnowledgeBase(reopened, HashingEmbedder(32)).count() == 1
    finally:
        reopened.close()
    with pytest.raises(KnowledgeError, match="not both"):
        open_qdrant(url="http://127.0.0.1:1", path=folder)


def test_fastembed_with_a_missing_or_incomplete_directory_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match=r"does not exist.*export-embedder"):
        FastEmbedEmbedder(model_path=tmp_path / "nope")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes(b"")
    with pytest.raises(EmbedderUnavailable, match=r"lacks tokenizer\.json, tokenizer_config\.json"):
        FastEmbedEmbedder(model_path=tmp_path / "model")


def test_check_model_dir_reads_the_size_from_config(tmp_path: Path) -> None:
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    assert check_model_dir(tmp_path) == 384
    (tmp_path / "config.json").write_text('{"hidden_size": 256}')
    assert check_model_dir(tmp_path) == 256
    (tmp_path / "config.json").write_text('{"hidden": 1}')
    with pytest.raises(EmbedderUnavailable, match="hidden_size"):
        check_model_dir(tmp_path)


def test_fastembed_with_a_broken_onnx_file_translates_the_error(tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(EmbedderUnavailable, match="could not load embedding model"):
        FastEmbedEmbedder(model_path=tmp_path)
