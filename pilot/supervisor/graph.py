"""The supervisor: a LangGraph StateGraph over the data, training, deployment and monitoring subagents.

One thread per cycle (``thread_id = cycle-<id>``), checkpointed (SQLite, or PostgreSQL with a Postgres store).
The approval, review and run steps call ``interrupt()`` and resume with ``Command(resume=...)``; since a resumed
node runs again from its start, nothing with a side effect precedes an ``interrupt()``: approvals are created by
the node *before* it, runs are created by ``train`` (idempotent per decision), and the waiting node only reads
the answer from the store, which is the source of truth. The nodes are module-level functions
(``training_nodes``, ``model_nodes``); this module is the edges.

    monitor ─► observe ─► decide ─┬─► finish
                                  └─► snapshot ─► plan ─┬─► finish (denied / nothing to rent)
                                                        ├─► request_approval ─► await_approval ─┬─► train
                                                        └─► train                              └─► finish
    train ─┬─► await_run ⟲ (until the run ends) ─┬─► evaluate ─► gate ─┬─► finish (promoted / rejected)
           │                                      │     ▲  │           └─► request_review ─► await_review ─► finish
           │                                      │     │  └─► await_stage ⟲ (a rented evaluation host, until ready)
           │                                      └─► finish
           ├─► request_approval (the price now needs approval, or is above the approved ceiling)
           └─► finish (not launched)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph

from pilot.context import PilotContext
from pilot.spend.guardrails import Verdict
from pilot.store.status import DecisionAction
from pilot.supervisor import model_nodes, training_nodes
from pilot.supervisor.state import CycleState

Node = Callable[[PilotContext, CycleState], dict[str, Any]]

NODES: dict[str, Node] = {
    "monitor": model_nodes.monitor,
    "observe": training_nodes.observe,
    "decide": training_nodes.decide,
    "snapshot": training_nodes.snapshot,
    "plan": training_nodes.plan,
    "request_approval": training_nodes.request_approval,
    "await_approval": training_nodes.await_approval,
    "train": training_nodes.train,
    "await_run": training_nodes.await_run,
    "evaluate": model_nodes.evaluate,
    "await_stage": model_nodes.await_stage,
    "gate": model_nodes.gate,
    "request_review": model_nodes.request_review,
    "await_review": model_nodes.await_review,
    "finish": model_nodes.finish,
}


def after_monitor(state: CycleState) -> Literal["observe", "finish"]:
    return "finish" if state.get("action") == DecisionAction.ROLLBACK else "observe"


def after_decide(state: CycleState) -> Literal["snapshot", "finish"]:
    return "snapshot" if state["action"] == DecisionAction.FINETUNE else "finish"


def after_snapshot(state: CycleState) -> Literal["plan", "finish"]:
    return "finish" if state.get("outcome") else "plan"


def after_plan(state: CycleState) -> Literal["request_approval", "train", "finish"]:
    if state["action"] != DecisionAction.FINETUNE:
        return "finish"
    return "request_approval" if state.get("verdict") == Verdict.NEEDS_APPROVAL else "train"


def after_approval(state: CycleState) -> Literal["train", "finish"]:
    return "finish" if state.get("outcome") else "train"


def after_train(state: CycleState) -> Literal["await_run", "request_approval", "finish"]:
    if state.get("reapprove"):
        return "request_approval"
    return "await_run" if state.get("run_id") and not state.get("outcome") else "finish"


def after_await_run(state: CycleState) -> Literal["await_run", "evaluate", "finish"]:
    if state.get("outcome"):
        return "finish"
    return "evaluate" if state.get("version_id") else "await_run"


def after_evaluate(state: CycleState) -> Literal["await_stage", "gate", "finish"]:
    if state.get("outcome"):
        return "finish"
    return "await_stage" if state.get("awaiting_stage") else "gate"


def after_await_stage(state: CycleState) -> Literal["await_stage", "evaluate"]:
    return "await_stage" if state.get("awaiting_stage") else "evaluate"


def after_gate(state: CycleState) -> Literal["request_review", "finish"]:
    return "request_review" if state.get("verdict") == "inconclusive" else "finish"


def build_graph(ctx: PilotContext) -> StateGraph:
    graph = StateGraph(CycleState)
    for name, fn in NODES.items():
        node = functools.update_wrapper(functools.partial(fn, ctx), fn)
        graph.add_node(name, node)  # type: ignore[call-overload]
    graph.add_edge(START, "monitor")
    graph.add_conditional_edges("monitor", after_monitor)
    graph.add_edge("observe", "decide")
    graph.add_conditional_edges("decide", after_decide)
    graph.add_conditional_edges("snapshot", after_snapshot)
    graph.add_conditional_edges("plan", after_plan)
    graph.add_edge("request_approval", "await_approval")
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_conditional_edges("train", after_train)
    graph.add_conditional_edges("await_run", after_await_run)
    graph.add_conditional_edges("evaluate", after_evaluate)
    graph.add_conditional_edges("await_stage", after_await_stage)
    graph.add_conditional_edges("gate", after_gate)
    graph.add_edge("request_review", "await_review")
    graph.add_edge("await_review", "finish")
    graph.add_edge("finish", END)
    return graph


@contextmanager
def open_checkpointer(ctx: PilotContext) -> Iterator[Any]:
    """SQLite checkpoints beside the store; PostgreSQL ones when the store is PostgreSQL."""
    if ctx.store.is_sqlite:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        path = ctx.settings.data_dir / "checkpoints.sqlite"
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        url = ctx.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with PostgresSaver.from_conn_string(url) as pg_saver:
            pg_saver.setup()
            yield pg_saver
