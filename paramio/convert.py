"""Streaming conversion between formats: read one tensor, write it, drop it.

Peak memory stays near the largest tensor, whatever the checkpoint's size: readers map or read one tensor
at a time and writers consume them one at a time (``writing.write_stream``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ._gc import paused_gc
from .checkpoint import producer
from .checksum import algorithm_of
from .locations import locate_output, open_source
from .manifest import Manifest, TensorEntry
from .writing import cast_manifest, parse_dtype, write_stream

__all__ = ["convert", "Progress"]

#: Called after each tensor is written, with its name and size in bytes.
Progress = Callable[[str, int], None]


@paused_gc
def convert(src: str | Path, dst: str | Path, *, format: str | None = None, dtype: str | torch.dtype | None = None,
            verify: bool = True, progress: Progress | None = None, durable: bool = True,
            max_shard_size: int | str | None = None) -> Manifest:
    """Convert ``src`` to ``dst`` (format from ``format`` or the suffix), keeping ties, views, metadata,
    gradients and checksums; ``dtype`` casts floating tensors; ``durable`` and ``max_shard_size`` (``dst`` a
    folder or an index path: a sharded folder): as for :func:`paramio.save`.
    Returns the manifest written."""
    location = locate_output(dst, format, max_shard_size=max_shard_size)
    with open_source(src) as source:
        manifest = source.manifest()
        target = cast_manifest(manifest, parse_dtype(dtype)).model_copy(update={"producer": producer()})
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
                            options={"max_shard_size": max_shard_size})
