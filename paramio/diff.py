"""Compare two checkpoints, in any formats: names, dtypes, shapes, values and ties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, collect, from_mapping
from .reading import load
from .ties import tie_differences, tie_partition

__all__ = ["Diff", "TensorDiff", "diff"]

_CHUNK = 1 << 22  # elements compared at a time, so a diff holds a few float64 chunks, not whole copies


@dataclass(frozen=True)
class TensorDiff:
    """How one name differs: ``reason`` is "dtype", "shape" or "values" (with max_abs and rel_l2)."""

    name: str
    reason: str
    max_abs: float = 0.0
    rel_l2: float = 0.0
    a: str = ""
    b: str = ""


@dataclass(frozen=True)
class Diff:
    """``equal`` when both hold the same names, ties, dtypes, shapes and values (within tolerance)."""

    only_in_a: tuple[str, ...] = ()
    only_in_b: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    ties_changed: bool = False
    max_abs: float = 0.0
    details: Mapping[str, TensorDiff] = field(default_factory=dict)
    tie_differences: tuple[str, ...] = ()
    metadata_changed: bool = False

    @property
    def equal(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed or self.ties_changed)


def _as_checkpoint(obj: object) -> Checkpoint:
    if isinstance(obj, Checkpoint):
        return obj
    if isinstance(obj, nn.Module):
        return collect(obj)
    if isinstance(obj, Mapping):
        return from_mapping(obj)
    if isinstance(obj, (str, Path)):
        return load(obj)
    raise TypeError(f"diff() compares paths, checkpoints, models or mappings, not {type(obj).__name__}")


def _value_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, ||a - b|| / ||a||), in float64, chunk by chunk; NaNs in the same places are equal."""
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    max_abs, err2, ref2 = 0.0, 0.0, 0.0
    for start in range(0, fa.numel(), _CHUNK):
        x = fa[start:start + _CHUNK].to(torch.float64)
        y = fb[start:start + _CHUNK].to(torch.float64)
        nan_x, nan_y = torch.isnan(x), torch.isnan(y)
        if not torch.equal(nan_x, nan_y):
            return math.inf, math.inf
        same = (x == y) | nan_x  # equal infinities give nan when subtracted
        d = torch.where(same, torch.zeros_like(x), (x - y).abs())
        if torch.isnan(d).any():
            return math.inf, math.inf
        max_abs = max(max_abs, float(d.max()))
        err2 += float((d * d).sum())
        ref2 += float(torch.where(torch.isfinite(x), x * x, torch.zeros_like(x)).sum())
    rel = math.sqrt(err2) / math.sqrt(ref2) if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    return max_abs, rel


def diff(a: object, b: object, *, tolerance: float = 0.0) -> Diff:
    """Compare ``a`` and ``b`` (paths in any format, checkpoints, models or mappings).

    A tensor is *changed* when its dtype or shape differs, or its values differ by more than ``tolerance``
    (absolute); ``max_abs`` is the largest absolute difference over all common tensors.
    """
    ca, cb = _as_checkpoint(a), _as_checkpoint(b)
    only_a = tuple(n for n in ca if n not in cb)
    only_b = tuple(n for n in cb if n not in ca)
    details: dict[str, TensorDiff] = {}
    changed: list[str] = []
    overall = 0.0
    seen: dict[tuple[int, int], tuple[float, float]] = {}
    for name in ca:
        if name not in cb:
            continue
        x, y = ca[name], cb[name]
        sig_a, sig_b = f"{x.dtype}{list(x.shape)}", f"{y.dtype}{list(y.shape)}"
        if x.shape != y.shape:
            details[name] = TensorDiff(name, "shape", math.inf, math.inf, sig_a, sig_b)
            changed.append(name)
            continue
        key = (id(x), id(y))
        if key not in seen:
            seen[key] = _value_diff(x, y) if x.numel() else (0.0, 0.0)
        max_abs, rel = seen[key]
        overall = max(overall, max_abs)
        if x.dtype != y.dtype or max_abs > tolerance:
            # a dtype change is a change whatever the values; its value difference is still reported
            reason = "dtype" if x.dtype != y.dtype else "values"
            details[name] = TensorDiff(name, reason, max_abs, rel, sig_a, sig_b)
            changed.append(name)
    tie_lines = [f"`{name}`: tied to {{{', '.join(sorted(ga))}}} in A, {{{', '.join(sorted(gb))}}} in B"
                 for name, ga, gb in tie_differences(tie_partition(ca, ca.ties), tie_partition(cb, cb.ties))]
    return Diff(only_in_a=only_a, only_in_b=only_b, changed=tuple(changed), ties_changed=bool(tie_lines),
                max_abs=overall, details=details, tie_differences=tuple(tie_lines),
                metadata_changed=ca.metadata != cb.metadata)
