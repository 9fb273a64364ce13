"""Streaming per-tensor statistics: what ``paramio inspect --stats`` shows.

One stored tensor (and the views over it) in memory at a time, read through the location layer with
checksums verified, so a corrupt tensor is an error rather than a figure. The figures are accumulated in
float64 over fixed-size chunks of the flat data: exact enough for bf16/fp16/fp8 inputs, and never a
float64 copy of a whole large tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from .locations import open_source
from .ties import view_of

__all__ = ["FIGURES", "TensorFigures", "tensor_stats", "each_tensor", "read_stats"]

#: The figures of :func:`tensor_stats`, in display order.
FIGURES = ("mean", "std", "min", "max", "norm")
#: figure name -> value (None where undefined: an empty tensor, complex moments).
TensorFigures = dict[str, float | None]

#: Elements converted to float64 at a time (8 MiB of float64).
CHUNK = 1 << 20


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensor's elements, flat and in float64 (complex128 for complex), CHUNK at a time."""
    flat = tensor.detach().reshape(-1)  # a view when contiguous; one copy in the tensor's own dtype otherwise
    wide = torch.complex128 if flat.is_complex() else torch.float64
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start:start + CHUNK].to(wide)


def tensor_stats(tensor: torch.Tensor) -> TensorFigures:
    """mean, population std, min, max and L2 norm in float64 (only the norm for complex tensors).

    The moments are shifted by the first element before summing, so that a large common offset does not
    cancel the variance away in float64; a NaN anywhere makes every figure NaN, as torch's reductions do.
    """
    out: TensorFigures = dict.fromkeys(FIGURES)
    n = tensor.numel()
    if n == 0:
        return out
    if tensor.is_complex():
        out["norm"] = math.sqrt(sum(float(c.abs().square().sum()) for c in _chunks(tensor)))
        return out
    shift = total = square = norm_sq = 0.0
    lows, highs = [], []
    for i, chunk in enumerate(_chunks(tensor)):
        if i == 0:
            shift = float(chunk[0]) if math.isfinite(float(chunk[0])) else 0.0
        centred = chunk - shift
        total += float(centred.sum())
        square += float(centred.square().sum())
        norm_sq += float(chunk.square().sum())
        lows.append(chunk.min())
        highs.append(chunk.max())
    mean_shifted = total / n
    variance = square / n - mean_shifted * mean_shifted
    std = math.sqrt(max(variance, 0.0)) if not math.isnan(variance) else math.nan
    out.update(mean=shift + mean_shifted, std=std, min=float(torch.stack(lows).min()),
               max=float(torch.stack(highs).max()), norm=math.sqrt(norm_sq))
    return out


def each_tensor(path: str | Path, *, verify: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every stored tensor and, after it, each view over it, one stored tensor in
    memory at a time (checksums verified unless ``verify=False``)."""
    with open_source(path) as source:
        manifest = source.manifest()
        views: dict[str, list] = {}
        for v in manifest.views:
            views.setdefault(v.base, []).append(v)
        for entry in manifest.tensors:
            tensor = source.read_entry(entry, verify=verify)
            yield entry.name, tensor
            for v in views.get(entry.name, ()):
                yield v.name, view_of(tensor, v)
            del tensor


def read_stats(path: str | Path, *, verify: bool = True) -> dict[str, TensorFigures]:
    """:func:`tensor_stats` of every stored tensor and view of a checkpoint, streaming."""
    return {name: tensor_stats(tensor) for name, tensor in each_tensor(path, verify=verify)}
