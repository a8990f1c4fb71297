"""Named points in the loop where tests attack: engage the kill switch there, or kill the process there.

``reached(name)`` is a no-op in production. Tests install a callback (``install``); the crash tests start the
daemon with ``LEARNING_PILOT_CRASH_AT=<name>``, which the CLI turns into an ``os._exit(137)`` at that point (as a
``kill -9`` would end it: no cleanup, no commit after the point).
"""

from __future__ import annotations

import os
from collections.abc import Callable

Callback = Callable[[str], None]
_callbacks: list[Callback] = []

CRASH_ENV = "LEARNING_PILOT_CRASH_AT"


def reached(name: str) -> None:
    for callback in list(_callbacks):
        callback(name)


def install(callback: Callback) -> Callable[[], None]:
    """Add ``callback``; returns the function that removes it."""
    _callbacks.append(callback)
    return lambda: _callbacks.remove(callback) if callback in _callbacks else None


def install_crash_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """When ``LEARNING_PILOT_CRASH_AT`` names a point, exit the process abruptly on reaching it (tests only)."""
    target = environ.get(CRASH_ENV)
    if not target:
        return

    def crash(name: str) -> None:
        if name == target:
            os._exit(137)

    install(crash)
