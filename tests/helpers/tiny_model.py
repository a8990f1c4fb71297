"""Test helpers: the cached tiny base model and demo-task examples.

``tiny_base_model()`` builds jobs/build_base_model.py's model once per content hash of the build code and
caches it under <repo>/.cache/tiny-base-<hash12>/. The build happens in a temporary directory that is renamed
into place, under an exclusive ``fcntl.flock``, so concurrent pytest processes build it exactly once and no
reader ever sees a half-written model.
"""

from __future__ import annotations

import fcntl
import hashlib
import random
from pathlib import Path
from typing import Any

from jobs.build_base_model import STYLES, WORDS, build, format_identifier

REPO_ROOT = Path(__file__).resolve().parents[2]
_BUILD_SOURCES = (REPO_ROOT / "jobs" / "build_base_model.py", REPO_ROOT / "jobs" / "common.py")


def build_hash() -> str:
    h = hashlib.sha256()
    for src in _BUILD_SOURCES:
        h.update(src.read_bytes())
    return h.hexdigest()[:12]


def tiny_base_model(cache_root: Path | None = None) -> Path:
    """Return the directory of the built tiny base model, building it first if it is not cached."""
    root = Path(cache_root) if cache_root is not None else REPO_ROOT / ".cache"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"tiny-base-{build_hash()}"
    if (target / "build_info.json").is_file():
        return target
    with open(root / f".tiny-base-{build_hash()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / "build_info.json").is_file():  # another process may have built it meanwhile
                build(target)  # writes a temp sibling and renames it into place
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def demo_task_example(rng: random.Random, index: int, *, weight: float = 1.0) -> dict[str, Any]:
    """One "identifier style fix" example in the dataset-snapshot format."""
    words = rng.sample(WORDS, rng.choice((2, 3)))
    target_style = rng.choice(list(STYLES))
    source_style = rng.choice([s for s in STYLES if s != target_style])
    source = format_identifier(words, source_style)
    return {
        "id": f"demo-{index:05d}",
        "domain": STYLES[target_style],
        "weight": weight,
        "messages": [
            {"role": "user", "content": f"Rename the identifier `{source}` to {target_style}."},
            {"role": "assistant", "content": format_identifier(words, target_style)},
        ],
    }


def demo_task_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` demo-task examples, deterministic for ``seed``; ids are unique within one call."""
    rng = random.Random(seed)
    return [demo_task_example(rng, i) for i in range(n)]
