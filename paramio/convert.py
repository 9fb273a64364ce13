"""Streaming conversion between formats: read one tensor, write it, drop it.

Peak memory stays near the largest tensor, whatever the checkpoint's size: readers map or read one tensor
at a time and writers consume them one at a time (``writing.write_stream``). A computation graph the source
holds (ONNX) goes along to a file of the same format (its tensors streamed back in under their names); to
another format it cannot go, which a :class:`GraphNotCarried` warning says.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ._gc import paused_gc
from .checkpoint import producer
from .checksum import algorithm_of
from .errors import FormatError
from .locations import Location, Source, locate_output, open_source
from .manifest import Manifest, TensorEntry
from .writing import cast_manifest, parse_dtype, write_stream

__all__ = ["convert", "Progress", "GraphNotCarried"]

#: Called after each tensor is written, with its name and size in bytes.
Progress = Callable[[str, int], None]


class GraphNotCarried(UserWarning):
    """The source holds a computation graph (an ONNX model) that the destination's format has no place for:
    only its tensors are converted."""


def _graph_options(source: Source, location: Location, dtype: str | None, src: object) -> dict[str, Any]:
    """Writer options that carry the source's graph to a destination of the same format; a warning when the
    destination cannot hold it; a refusal of a cast, which would leave the graph's operators mistyped."""
    graph = source.graph()
    if graph is None:
        return {}
    if location.format != source.location.format or location.kind != "file":
        warnings.warn(GraphNotCarried(
            f"{src}: its {source.location.format} computation graph is not carried to {location.format} "
            f"({'a sharded folder' if location.kind != 'file' else 'tensors only'}); convert to another "
            f"{source.location.format} file to keep it"), stacklevel=3)
        return {}
    if dtype is not None:
        raise FormatError(f"{src}: a cast to {dtype} would leave the tensors of its computation graph of another "
                          "type than its operators expect; convert without a dtype, or export the model again "
                          "after casting it (model.to(dtype))")
    return {"graph": graph}


@paused_gc
def convert(src: str | Path, dst: str | Path, *, format: str | None = None, dtype: str | torch.dtype | None = None,
            verify: bool = True, progress: Progress | None = None, durable: bool = True,
            max_shard_size: int | str | None = None) -> Manifest:
    """Convert ``src`` to ``dst`` (format from ``format`` or the suffix), keeping ties, views, metadata,
    gradients and checksums; ``dtype`` casts floating tensors; ``durable`` and ``max_shard_size`` (``dst`` a
    folder or an index path: a sharded folder): as for :func:`paramio.save`.
    Returns the manifest written."""
    location = locate_output(dst, format, max_shard_size=max_shard_size)
    cast = parse_dtype(dtype)
    with open_source(src) as source:
        manifest = source.manifest()
        options = _graph_options(source, location, cast, src)
        target = cast_manifest(manifest, cast).model_copy(update={"producer": producer()})
        algorithms = {algorithm_of(t.checksum) for t in manifest.tensors if t.checksum}
        checksum = algorithms.pop() if len(algorithms) == 1 else "default"

        def items() -> Iterator[tuple[TensorEntry, torch.Tensor]]:
            for entry, out in zip(manifest.tensors, target.tensors, strict=True):
                tensor = source.read_entry(entry, verify=verify)
                yield out, tensor
                if progress is not None:
                    progress(entry.name, tensor.numel() * tensor.element_size())
                del tensor

        return write_stream(location, target, items(), checksum=checksum, durable=durable,
                            options={"max_shard_size": max_shard_size, **options})
