"""The ``paramio`` command (typer + rich): export, convert, inspect, validate, signature, diff, schema.

Where things live: :mod:`.app` is the typer app and its one exit path (exit codes, ``--debug``),
:mod:`.options` the shared option types, :mod:`.factory` models from ``package.module:callable``,
:mod:`.render` what is printed and written, and :mod:`.commands` one module per command. Command bodies
only delegate to the library (the public API, :mod:`paramio.stats`, :mod:`paramio.display`).
"""

from __future__ import annotations

from . import commands  # noqa: F401 - registers every command on the app
from .app import EXIT_BUG, EXIT_ERROR, EXIT_FINDING, EXIT_OK, app, main

__all__ = ["app", "main", "EXIT_OK", "EXIT_FINDING", "EXIT_ERROR", "EXIT_BUG"]
