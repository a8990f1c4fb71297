"""Whose instance is this: ours to destroy, another installation's to report, or nothing of ours.

Labels are ``learning-pilot/<env>/<installation>/<run_id>`` (``tools.gpu.base.instance_label``). An instance is
**ours** when it carries our env and our installation id, or when it carries an old-format label
(``learning-pilot/<env>/<run_id>``, written before installation ids) whose run id is a run or evaluation stage this
store knows.
Our env with another installation id, or an old-format label with a run id this store never created, is **another
installation's**: the reconciler and the kill switch never destroy it; they report it (``other_installations`` in
the status, the ``learning_pilot_other_installation_instances`` gauge, and one ``instance`` event whenever the set
they see changes). Everything else on the account is foreign and ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlmodel import select

from pilot.context import PilotContext
from pilot.store.installation import OTHERS_KEY, read_others
from pilot.store.models import EvalStage, PilotState, TrainingRun, utcnow
from pilot.store.status import EntityType
from pilot.store.writers import record_event
from tools.gpu.base import LabelOwner, label_owner, parse_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ownership:
    env: str
    installation: str
    known_ids: frozenset[str]  # the ids of this store's runs and evaluation stages

    def owner(self, label: str | None) -> LabelOwner:
        found = label_owner(label, self.env, self.installation, old_format_ok=True)
        parsed = parse_label(label)
        if found is LabelOwner.OURS and parsed is not None and parsed.installation is None:
            return LabelOwner.OURS if parsed.run_id in self.known_ids else LabelOwner.OTHER_INSTALLATION
        return found

    def is_ours(self, label: str | None) -> bool:
        return self.owner(label) is LabelOwner.OURS

    def others(self, labels: Mapping[str, int]) -> dict[str, int]:
        """The labels (with their instance counts) that belong to another installation of our env."""
        return {lbl: n for lbl, n in labels.items() if n > 0 and self.owner(lbl) is LabelOwner.OTHER_INSTALLATION}


def ownership(ctx: PilotContext) -> Ownership:
    with ctx.store.session() as session:
        ids = frozenset([*session.exec(select(TrainingRun.id)).all(), *session.exec(select(EvalStage.id)).all()])
    return Ownership(ctx.settings.env, ctx.installation, ids)


def note_others(ctx: PilotContext, labels: Mapping[str, int], *, actor: str, seen_by: str) -> None:
    """Record the other installations' instances a look saw (label -> count); one event when the set changed."""
    current = {str(k): int(v) for k, v in labels.items() if int(v) > 0}
    with ctx.store.session(write=True) as session:
        before = read_others(session).get("labels") or {}
        value = json.dumps(
            {"labels": current, "count": sum(current.values()), "seen_at": utcnow().isoformat(timespec="seconds")}
        )
        row = session.get(PilotState, OTHERS_KEY)
        if row is None:
            session.add(PilotState(key=OTHERS_KEY, value=value))
        else:
            row.value = value
            row.updated_at = utcnow()
        if set(before) != set(current):
            record_event(
                session,
                entity_type=EntityType.INSTANCE,
                entity_id="other_installations",
                actor=actor,
                reason=f"{seen_by}: {sum(current.values())} instance(s) of env {ctx.settings.env!r} belong to another "
                "installation (not ours: never destroyed here)",
                old=str(sum(int(v) for v in before.values())),
                new=str(sum(current.values())),
                data={"labels": current, "installation": ctx.installation},
            )
    if current and set(before) != set(current):
        logger.warning(
            "%d instance(s) on %s carry env %r but another installation id (%s): left alone. Another deployment "
            "shares this account and env",
            sum(current.values()),
            ctx.gpu.name,
            ctx.settings.env,
            ", ".join(sorted(current))[:300],
        )
