"""The supervisor agent's rationale reaches people: status (text and JSON), explain, and the Slack approval."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from pilot.cli.render import render_status
from pilot.service.status import build_status
from pilot.settings import load_settings
from pilot.store import Store
from pilot.store.status import ApprovalKind
from pilot.supervisor import approvals
from pilot.supervisor.notify import approval_request
from tests import factories

RATIONALE = "Train: 1,043 new curated examples (>= 200) and $0.00 of $10.00 spent today; cites new_examples=1043."


def test_rationale_in_status_and_the_slack_request(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    store = Store(settings.database_url)
    store.migrate()
    with store.session(write=True) as s:
        decision = factories.decision(
            s, rationale=RATIONALE, figures={"agent": {"fallback": None}, "new_examples": 1043}
        )
        approval = approvals.request_approval(
            s, decision=decision, kind=ApprovalKind.TRAINING, summary={"why": "x"}, cost_ceiling_usd=0, expiry_minutes=5
        )
    report = build_status(settings, store)
    assert report["decisions"][0]["rationale"] == RATIONALE
    out = io.StringIO()
    render_status(Console(file=out, width=300), report)
    assert RATIONALE in out.getvalue()
    with store.session() as s:
        request = approval_request(s, s.get(type(approval), approval.id))
    assert request.extra["Agent's rationale"] == RATIONALE
    store.close()
