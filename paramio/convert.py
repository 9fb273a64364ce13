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
from .formats.registry import for_path
from .manifest import Manifest, TensorEntry
from .reading import manifest_of, open_file, read_verified
from .writing import cast_manifest, parse_dtype, write_stream

__all__ = ["convert", "Progress"]

#: Called after each tensor is written, with its name and size in bytes.
Progress = Callable[[str, int], None]


@paused_gc
def convert(src: str | Path, dst: str | Path, *, format: str | None = None, dtype: str | torch.dtype | None = None,
            verify: bool = True, progress: Progress | None = None, durable: bool = True) -> Manifest:
    """Convert ``src`` to ``dst`` (format from ``format`` or the suffix), keeping ties, views, metadata,
    gradients and checksums; ``dtype`` casts floating tensors; ``durable``: as for :func:`paramio.save`.
    Returns the manifest written."""
    dst_format = for_path(dst, format)
    with open_file(src) as reader:
        source = manifest_of(reader)
        target = cast_manifest(source, parse_dtype(dtype)).model_copy(update={"producer": producer()})
        algorithms = {algorithm_of(t.checksum) for t in source.tensors if t.checksum}
        checksum = algorithms.pop() if len(algorithms) == 1 else "default"

        def items() -> Iterator[tuple[TensorEntry, torch.Tensor]]:
            for entry, out in zip(source.tensors, target.tensors):
                tensor = read_verified(reader, entry, verify)
                yield out, tensor
                if progress is not None:
                    progress(entry.name, tensor.numel() * tensor.element_size())
                del tensor

        return write_stream(dst_format, dst, target, items(), checksum=checksum, durable=durable)
