"""What the CLI prints and writes: consoles (data on stdout, status and errors on stderr), one-line error
messages, JSON numbers, text files written atomically, and the progress bar.

The inspect table itself is :func:`paramio.display.manifest_table` (the demo prints it too).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import FormatError, ParamioError

__all__ = ["stdout", "stderr", "status", "one_line", "json_number", "write_text", "progress", "print_findings",
           "audit_json"]


def stdout() -> Console:
    """A console on stdout. Created per call so that redirected streams (tests, pipes) are seen; wide when
    not a terminal so that tables piped to a file do not wrap names."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(markup=False, highlight=False, width=200 if wide else None)


def stderr() -> Console:
    """A console on stderr, for status lines, progress and errors."""
    return Console(stderr=True, markup=False, highlight=False)


def status(message: str) -> None:
    """A status line on stderr (never mixed with the data on stdout)."""
    stderr().print(message, soft_wrap=True)


def one_line(e: BaseException) -> str:
    """The exception's message; ValidationError keeps its list of problems, anything else its first line."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip() or type(e).__name__
    if isinstance(e, ParamioError) and hasattr(e, "problems"):
        return text
    return text.splitlines()[0]


def json_number(value: float | None) -> float | str | None:
    """A float for JSON: NaN and infinities as the strings "nan", "inf", "-inf" (JSON has no literal)."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def write_text(path: Path, text: str) -> None:
    """Write through a temporary name, so a failure leaves the previous file as it was."""
    from ..atomic import staged

    try:
        with staged() as staging:
            staging.temp_for(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from e


@contextlib.contextmanager
def progress(total: Callable[[], int], verb: str = "converting") -> Iterator[Callable[[str, int], None] | None]:
    """A progress callback ``(name, nbytes)`` drawing a rich bar on stderr, or None when stderr is not a
    terminal. ``total`` (bytes) is asked only when the bar is drawn."""
    console = stderr()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(verb), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=total())

        def advance(name: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=name)

        yield advance


def print_findings(console: Console, lines: Sequence[str], word: str) -> None:
    """Findings under the table, one per line: ``note: …`` (the tie audit) or ``  - …`` (problems)."""
    for line in lines:
        console.print(f"{word}: {line}", soft_wrap=True)


def audit_json(found: Any) -> dict[str, Any]:
    """The tie audit (:class:`paramio.Audit`) as JSON."""
    return {"suspected_ties": [list(g) for g in found.suspected_ties],
            "restorable": [list(g) for g in found.restorable], "mismatched": [list(g) for g in found.mismatched],
            "dropped": {a: found.dropped_from[a] for a in found.dropped}, "notes": list(found.notes),
            "problems": list(found.problems)}
