"""``paramio export SOURCE -o OUT``: save a model built by a factory, or a checkpoint file, ties kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import paramio

from ...display import summary
from ..app import app
from ..factory import about_model, is_factory, model_from, no_example_input_for_a_file
from ..options import ChecksumChoice, DtypeOption, Durable, ExampleInputs, FormatName, parse_metadata
from ..render import status

__all__ = ["export"]


@app.command()
def export(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A factory returning an nn.Module (package.module:callable or path/to/file.py:callable; the current "
        "folder is importable), or a checkpoint file (.pt/.pth/.bin state dict, or any format paramio reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write; its suffix picks the format.",
                                      show_default=False)],
    format: Annotated[FormatName | None, typer.Option("--format", "-f", help="Format, if not the suffix's.")] = None,
    example_input: ExampleInputs = None,
    grads: Annotated[bool, typer.Option("--grads", help="Also save gradients (with --example-input: of a "
                                        "backward pass of the first output's sum). A file keeps its own.")] = False,
    dtype: DtypeOption = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", metavar="KEY=VALUE",
                                                       help="User metadata to record; repeatable.")] = None,
    checksum: Annotated[ChecksumChoice, typer.Option("--checksum", help="Per-tensor checksum: default "
                                                     "(xxh3-64), sha256 or none.")] = ChecksumChoice.default,
    durable: Durable = True,
) -> None:
    """Save a model (from a factory) or a checkpoint file to OUT, ties kept."""
    meta = parse_metadata(metadata or [])
    if is_factory(source):
        obj, inputs = model_from(source, example_input, backward=grads)
    else:
        if example_input:
            raise no_example_input_for_a_file()
        obj, inputs = paramio.load(source), None
    with about_model(source):
        manifest = paramio.save(obj, out, format=format.value if format else None, example_inputs=inputs,
                                grads=grads, dtype=dtype, metadata=meta or None, checksum=checksum.value,
                                durable=durable)
    status(f"wrote {out}: {summary(manifest)}")
