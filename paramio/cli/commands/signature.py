"""``paramio signature SPEC|FILE [-o sig.json]``: the names, dtypes, shapes and ties a model or checkpoint
has, as JSON that ``validate --against`` accepts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import paramio

from ..app import app, examples
from ..factory import about_model, model_or_path
from ..options import ExampleInputs
from ..render import status, write_text

__all__ = ["signature"]


@app.command(epilog=examples(
    "paramio signature mymodels:build -o model.sig.json",
    "paramio validate model.safetensors --against model.sig.json",
))
def signature(
    source: Annotated[str, typer.Argument(metavar="SPEC|FILE", help="A factory (package.module:callable) or a "
                                          "checkpoint file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON here (default: stdout).")] = None,
    example_input: ExampleInputs = None,
) -> None:
    """Print or save the signature (names, dtypes, shapes, ties) of a model or checkpoint."""
    with about_model(source):
        text = paramio.signature(model_or_path(source, example_input)).to_json() + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    write_text(out, text)
    status(f"wrote {out}")
