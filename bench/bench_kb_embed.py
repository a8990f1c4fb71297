"""Knowledge-base embedding pipeline vs raw fastembed on the same texts. Target: pipeline >= 0.9x raw.

"Pipeline" is KnowledgeBase.upsert_solutions into an in-memory Qdrant (embedding through FastEmbedEmbedder,
batching, payloads, upsert); "raw" is TextEmbedding.embed on the same task texts with the same batch size.
Needs the exported ONNX embedder (`learning-pilot kb export-embedder DIR`).

    python bench/bench_kb_embed.py --model-path DIR [--texts 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qdrant_client import QdrantClient  # noqa: E402

from subagents.data.samples import generate_demo_records  # noqa: E402
from subagents.data.schema import parse_jsonl_line  # noqa: E402
from tools.knowledge import EmbedderUnavailable, FastEmbedEmbedder, KnowledgeBase, Solution  # noqa: E402

TARGET = 0.9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model-path",
        type=Path,
        default=os.environ.get("LEARNING_PILOT_KNOWLEDGE__EMBEDDING_MODEL_PATH")
        or ("data/demo/models/minilm-onnx" if Path("data/demo/models/minilm-onnx/model.onnx").is_file() else None),
    )
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="best of N")
    args = parser.parse_args()
    if args.model_path is None:
        print("no embedder: pass --model-path DIR (build it with `learning-pilot kb export-embedder DIR`)")
        return 2
    try:
        embedder = FastEmbedEmbedder(model_path=args.model_path, batch_size=args.batch)
    except EmbedderUnavailable as exc:
        print(f"embedder unavailable: {exc}")
        return 2
    records = [parse_jsonl_line(x) for x in generate_demo_records(args.texts, seed=3, malformed=0.0)]
    now = datetime.now(UTC)
    solutions = [
        Solution(f"k{i}", r.task, r.output, r.domain, 1.0, now, tuple(r.tags), r.model_version, r.record_id)
        for i, r in enumerate(records)
    ]
    texts = [s.embedding_text() for s in solutions]
    raw_model = embedder._model  # the same loaded TextEmbedding: a fair comparison of the pipeline around it
    list(raw_model.embed(texts[:128], batch_size=args.batch))  # warm-up (onnxruntime allocations)

    raw_best = pipe_best = 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        n = sum(1 for _ in raw_model.embed(texts, batch_size=args.batch))
        raw_best = max(raw_best, n / (time.perf_counter() - t))
        kb = KnowledgeBase(QdrantClient(":memory:"), embedder, "bench")
        t = time.perf_counter()
        n = kb.upsert_solutions(solutions)
        pipe_best = max(pipe_best, n / (time.perf_counter() - t))
        kb.client.close()
    ratio = pipe_best / raw_best
    print(f"raw fastembed:         {raw_best:8.1f} texts/s")
    print(f"knowledge-base upsert: {pipe_best:8.1f} texts/s (embed + payload + in-memory Qdrant upsert)")
    print(f"ratio {ratio:.3f} (target >= {TARGET}) {'OK' if ratio >= TARGET else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
