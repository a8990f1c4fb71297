"""The ``learning-pilot`` command line. Light on import: each command loads its stack when it runs."""

from pilot.cli.app import app, main

__all__ = ["app", "main"]
