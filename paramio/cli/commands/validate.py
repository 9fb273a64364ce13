"""``paramio validate FILE [--against SPEC|signature.json]``: integrity, structure and, with --against, the
names, shapes and ties a model or signature expects. Exit 1 on problems."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import paramio

from ...display import summary
from ..app import EXIT_FINDING, app
from ..factory import about_model, model_or_path
from ..options import ExampleInputs
from ..render import stdout

__all__ = ["validate"]


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)],
    against: Annotated[str | None, typer.Option("--against", "-a", metavar="SPEC|signature.json",
                                                help="What FILE must hold: a factory (package.module:callable), "
                                                "a signature JSON, or another checkpoint.")] = None,
    example_input: ExampleInputs = None,
) -> None:
    """Check FILE whole (manifest, structure, checksums) and, with --against, its names, shapes and ties."""
    expected = model_or_path(against, example_input) if against is not None else None
    with about_model(against):
        report = paramio.validate(file, against=expected)
    console = stdout()
    if report.ok:
        what = summary(report.manifest) if report.manifest is not None else ""
        console.print(f"{file}: ok: {what}" + (f"; matches {against}" if against else ""), soft_wrap=True)
        return
    count = len(report.problems)
    console.print(f"{file}: {count} problem{'s' if count != 1 else ''}", soft_wrap=True)
    for problem in report.problems:
        console.print(f"  - {problem}", soft_wrap=True)
    raise typer.Exit(EXIT_FINDING)
