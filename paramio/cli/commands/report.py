"""``paramio report A [B] -o report.html|.png|.svg [--tensors GLOB]``: plots and the self-contained HTML page
(:func:`paramio.report`); with B, the drift from A to B."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import app, examples
from ..render import status

__all__ = ["report"]


@app.command(epilog=examples(
    "paramio report model.safetensors -o report.html",
    "paramio report base.safetensors tuned.safetensors -o drift.png",
))
def report(
    a: Annotated[Path, typer.Argument(metavar="A", help="A checkpoint: a file or a folder.", show_default=False)],
    b: Annotated[Path | None, typer.Argument(metavar="B", help="Another checkpoint (e.g. fine-tuned from A): "
                                             "adds the drift A -> B.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="report.html (one self-contained page), .png or .svg "
                                      "(one figure).", show_default=False)] = ...,
    tensors: Annotated[list[str] | None, typer.Option("--tensors", metavar="GLOB",
                                                      help="Histograms of these tensors (repeatable; default: the "
                                                      "largest).")] = None,
    bins: Annotated[int, typer.Option("--bins", min=1, max=4096, help="Histogram bins per tensor.")] = 64,
) -> None:
    """Plot A's per-tensor norms, spread and histograms with its tie groups, or (with B) the drift from A to
    B; -o report.html writes both into one page that needs no network.

    Examples: paramio report model.safetensors -o report.html;
    paramio report base.safetensors tuned.safetensors -o drift.png
    """
    import paramio

    written = paramio.report(a, b, path=out, tensors=tensors or None, bins=bins)
    status(f"wrote {written}")
