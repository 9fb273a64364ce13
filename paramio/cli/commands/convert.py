"""``paramio convert IN OUT``: one tensor at a time, ties kept, a progress bar on a terminal."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

import paramio

from ...display import summary
from ...dtype_names import ITEMSIZE
from ..app import app, examples
from ..options import DtypeOption, Durable, FormatName, MaxShardSize, shard_size
from ..render import progress, status

__all__ = ["convert"]


def _total_bytes(src: Path) -> int:
    return sum(t.numel * ITEMSIZE[t.dtype] for t in paramio.read_manifest(src).tensors)


@app.command(epilog=examples(
    "paramio convert model.safetensors model.h5",
    "paramio convert model.pt model-bf16.safetensors --dtype bf16",
))
def convert(
    src: Annotated[Path, typer.Argument(metavar="IN", help="The checkpoint to read: a file, or a folder (or its "
                                        "index file).", show_default=False)],
    dst: Annotated[str, typer.Argument(metavar="OUT", help="The file to write; its suffix picks the format. A "
                                       "folder (OUT/) or an index path writes a sharded folder.", show_default=False)],
    dtype: DtypeOption = None,
    format: Annotated[FormatName | None, typer.Option("--format", "-f", help="OUT's format, if not the suffix's.")
                      ] = None,
    durable: Durable = True,
    max_shard_size: MaxShardSize = None,
) -> None:
    """Convert IN to OUT one tensor at a time, ties kept (a progress bar on a terminal)."""
    from ...convert import GraphNotCarried

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GraphNotCarried)
        with progress(lambda: _total_bytes(src)) as advance:
            manifest = paramio.convert(src, dst, format=format.value if format else None, dtype=dtype,
                                       progress=advance, durable=durable,
                                       max_shard_size=shard_size(max_shard_size))
    for warning in caught:  # what the conversion leaves behind, one line each; other warnings as Python shows them
        if issubclass(warning.category, GraphNotCarried):
            status(f"warning: {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    status(f"wrote {dst}: {summary(manifest)}")
