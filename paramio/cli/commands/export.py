"""``paramio export SOURCE -o OUT``: save a model built by a factory, or a checkpoint file, ties kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import paramio

from ...display import summary
from ..app import InputError, app, examples
from ..factory import (about_model, dynamic_shapes, is_factory, model_from, no_example_input_for_a_file,
                       not_a_dotted_factory)
from ..hints import export_hint
from ..options import (ChecksumChoice, DtypeOption, Durable, DynamicAxes, DynamicBatch, ExampleInputs, FormatName,
                       MaxShardSize, parse_metadata, shard_size)
from ..render import one_line, status

__all__ = ["export"]


def _is_onnx(out: str, fmt: str | None) -> bool:
    return (fmt or "") == "onnx" or (fmt is None and Path(out).suffix.lower() == ".onnx")


@app.command(epilog=examples(
    "paramio export paramio.examples:tied_mlp -o mlp.safetensors",
    "paramio export paramio.examples:tiny_lm --example-input 1x8:int64:32 --dynamic-batch -o lm.onnx",
))
def export(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A factory returning an nn.Module (package.module:callable or path/to/file.py:callable; the current "
        "folder is importable), or a checkpoint file (.pt/.pth/.bin state dict, or any format paramio reads).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The file to write; its suffix picks the format. A folder "
                                     "(OUT/) or an index path writes a sharded folder.", show_default=False)],
    format: Annotated[FormatName | None, typer.Option("--format", "-f", help="Format, if not the suffix's.")] = None,
    example_input: ExampleInputs = None,
    grads: Annotated[bool, typer.Option("--grads", help="Also save gradients (with --example-input: of a "
                                        "backward pass of the first output's sum). A file keeps its own.")] = False,
    dtype: DtypeOption = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", metavar="KEY=VALUE",
                                                       help="User metadata to record; repeatable.")] = None,
    checksum: Annotated[ChecksumChoice, typer.Option("--checksum", help="Per-tensor checksum: default "
                                                     "(xxh3-64), sha256 or none.")] = ChecksumChoice.default,
    dynamic_batch: DynamicBatch = False,
    dynamic_axis: DynamicAxes = None,
    durable: Durable = True,
    max_shard_size: MaxShardSize = None,
) -> None:
    """Save a model (from a factory) or a checkpoint file to OUT, ties kept."""
    meta = parse_metadata(metadata or [])
    fmt = format.value if format else None
    if (dynamic_batch or dynamic_axis) and not (example_input and _is_onnx(out, fmt)):
        raise typer.BadParameter("--dynamic-batch and --dynamic-axis shape an ONNX graph: they need -o OUT.onnx "
                                 "and --example-input", param_hint="--dynamic-batch")
    options = {}
    if is_factory(source):
        obj, inputs = model_from(source, example_input, backward=grads)
        shapes = dynamic_shapes(obj, example_input or (), dynamic_batch, dynamic_axis or ())
        if shapes is not None:
            options["dynamic_shapes"] = shapes
    else:
        not_a_dotted_factory(source)
        if example_input:
            raise no_example_input_for_a_file()
        obj, inputs = paramio.load(source), None
    with about_model(source):
        try:
            manifest = paramio.save(obj, out, format=fmt, example_inputs=inputs, grads=grads, dtype=dtype,
                                    metadata=meta or None, checksum=checksum.value, durable=durable,
                                    max_shard_size=shard_size(max_shard_size), **options)
        except paramio.errors.FormatError as e:
            hint = export_hint(obj, e) if inputs is not None else ""
            if not hint:
                raise
            raise InputError(f"{source}: {one_line(e)}{hint}") from e
    status(f"wrote {out}: {summary(manifest)}")
