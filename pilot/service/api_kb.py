"""``GET /v1/kb/search?q=...&k=5``: the knowledge base over HTTP, for the agent product and for the CLI.

The router reads the daemon's one ``KnowledgeBase`` from ``app.state.kb`` (local-mode Qdrant allows a single
client per folder, so the daemon's refresh job and this route must share it). When the daemon has not put one
there, the first request opens it from ``app.state.ctx.settings`` and leaves it in ``app.state.kb``. Search runs
in the thread pool (embedding is CPU work), never on the event loop.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from pilot.data.knowledge import knowledge_base as shared_knowledge_base
from pilot.data.knowledge import open_knowledge_base
from tools.errors import PilotError
from tools.knowledge import KnowledgeBase, format_for_prompt

router = APIRouter()
_open_lock = threading.Lock()


def knowledge_base(request: Request) -> KnowledgeBase:
    state = request.app.state
    kb = getattr(state, "kb", None)
    if kb is None:
        with _open_lock:
            kb = getattr(state, "kb", None)
            if kb is None:
                ctx = state.ctx
                kb = state.kb = shared_knowledge_base(ctx) if hasattr(ctx, "_kb") else open_knowledge_base(ctx.settings)
    return kb


@router.get("/v1/kb/search")
def search(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=4000, description="The task to find solutions for.")],
    k: Annotated[int | None, Query(ge=1, le=100, description="How many hits (default knowledge.top_k).")] = None,
    min_success_rate: Annotated[float | None, Query(ge=0, le=1)] = None,
    domain: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Top-k solutions for ``q`` with their payload, and the same hits formatted for a prompt."""
    settings = request.app.state.ctx.settings.knowledge
    if not settings.enabled:
        raise HTTPException(status_code=404, detail="the knowledge base is disabled (knowledge.enabled = false)")
    try:
        hits = knowledge_base(request).search(
            q,
            top_k=k or settings.top_k,
            min_success_rate=settings.min_success_rate if min_success_rate is None else min_success_rate,
            domain=domain,
        )
    except PilotError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return {"query": q, "hits": [h.to_dict() for h in hits], "prompt": format_for_prompt(hits)}
