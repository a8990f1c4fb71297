"""What a generation job hands back: a predictions file, read strictly (hosts and subprocesses are not trusted)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tools.errors import PilotError


class EvaluationError(PilotError):
    """The evaluation could not be carried out (the generation job failed, the golden split is missing)."""


def read_predictions(
    path: Path, golden_ids: Iterable[str], *, losses: bool = True
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Parse a predictions file strictly (one JSON object per line: ``id``, ``prediction`` string, ``loss`` number
    or null) and compute the eval loss as the mean loss over the golden items answered. Raises
    ``EvaluationError`` naming the line. Only ``prediction`` and ``loss`` are kept: a score the producer added is
    not read. ``losses=False`` (a rented host, which gets prompts without references) drops every loss: one the
    host reports could only be made up, so the eval loss is None."""
    wanted = set(golden_ids)
    predictions: dict[str, dict[str, Any]] = {}
    with path.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item_id, prediction, loss = str(row["id"]), row["prediction"], row.get("loss")
            except (ValueError, KeyError, TypeError) as exc:
                raise EvaluationError(f"{path.name}:{number}: not a prediction ({exc!r})") from exc
            if not isinstance(prediction, str):
                raise EvaluationError(f"{path.name}:{number}: prediction must be a string")
            if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float)):
                raise EvaluationError(f"{path.name}:{number}: loss must be a number")
            if item_id in predictions:
                raise EvaluationError(f"{path.name}:{number}: id {item_id!r} answered twice")
            kept = None if loss is None or not losses else float(loss)
            predictions[item_id] = {"prediction": prediction, "loss": kept}
    known = [float(p["loss"]) for i, p in predictions.items() if i in wanted and p["loss"] is not None]
    return predictions, (sum(known) / len(known) if known else None)
