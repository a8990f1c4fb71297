"""The store: tables, engine, and the writers that own every status change."""

from pilot.store.engine import Store

__all__ = ["Store"]
