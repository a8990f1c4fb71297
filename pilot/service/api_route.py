"""``GET /v1/route?session_id=...``: which model the product should use for a session (canary routing over HTTP).

The answer is ``pilot.serving.canary.pick_model`` on the store's current rollout: ``{"session_id", "model", "version",
"canary", "share"}`` where ``model`` is the adapter name to request (a version id) or the base model's name. It is
stable per session while the share holds. Read-only; the handler is a plain ``def`` so FastAPI runs the store read
in its thread pool, never on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from pilot.serving.canary import pick_model

router = APIRouter()


@router.get("/v1/route")
def route(
    request: Request,
    session_id: Annotated[str, Query(min_length=1, max_length=200, description="The product's session id.")],
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    with ctx.store.session() as session:
        return pick_model(session, ctx.settings, session_id).to_dict()
