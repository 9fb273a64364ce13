"""Tie groups and partial aliases: which names are one tensor, and the canonical-name rule.

Two names are *tied* when they are the same view of the same memory: same storage, storage offset, shape,
strides and dtype (``state_dict()`` detaches, so object identity alone misses ties), or the very same
object (the only evidence for empty or uninitialized tensors, which own no memory). The *canonical* name
is the first in registration (``state_dict``) order; the others are *aliases*.

Tensors that overlap in memory without being the same view are *partial aliases* (a slice, a transpose).
paramio stores them faithfully when one of them is a contiguous tensor covering all the others: that one
is stored, the others are recorded as views into it. Any other overlap raises :class:`TieError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import TieError
from .manifest import TieGroup

__all__ = ["View", "TiePlan", "plan_ties", "find_ties", "named_tensors"]


@dataclass(frozen=True)
class View:
    """A partial alias: ``name`` is ``base``'s flat data seen with this offset, shape and stride."""

    name: str
    base: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class TiePlan:
    """What to store for a list of named tensors: stored names (in order), tie groups and views."""

    stored: tuple[str, ...]
    ties: tuple[TieGroup, ...]
    views: tuple[View, ...]


def named_tensors(obj: nn.Module | Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Every name with its tensor, aliases included, in registration order.

    For a module this is ``state_dict(keep_vars=True)``: parameters and persistent buffers, with the
    Parameter objects themselves so that a module reused twice shows the same object under both names.
    """
    if isinstance(obj, nn.Module):
        return list(obj.state_dict(keep_vars=True).items())
    if isinstance(obj, Mapping):
        return list(obj.items())
    raise TypeError(f"expected an nn.Module or a mapping of names to tensors, got {type(obj).__name__}")


def _owns_memory(t: torch.Tensor) -> bool:
    """Whether a tensor's memory can be compared by address (not empty, lazy or on the meta device)."""
    if isinstance(t, nn.parameter.UninitializedTensorMixin) or t.device.type == "meta":
        return False
    return t.numel() > 0


def _view_key(t: torch.Tensor) -> tuple:
    storage = t.untyped_storage()
    return (t.device, storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range [start, end) that a non-empty tensor reaches inside its storage."""
    size = t.element_size()
    start = t.storage_offset()
    last = start + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start * size, (last + 1) * size


def _groups(named: Sequence[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Names grouped by identity (same object or same view), groups in first-appearance order."""
    index: dict[object, int] = {}
    groups: list[list[str]] = []
    for name, t in named:
        keys = [("id", id(t))]
        if _owns_memory(t):
            keys.append(("view", _view_key(t)))
        found = next((index[k] for k in keys if k in index), None)
        if found is None:
            found = len(groups)
            groups.append([])
        groups[found].append(name)
        for k in keys:
            index.setdefault(k, found)
    return groups


def _partial_views(reps: Sequence[tuple[str, torch.Tensor]]) -> dict[str, View]:
    """Views for representatives that overlap another in memory; TieError when no faithful base exists."""
    by_storage: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, t in reps:
        if _owns_memory(t):
            by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append((name, t))
    views: dict[str, View] = {}
    for members in by_storage.values():
        if len(members) < 2:
            continue
        order = {name: i for i, (name, _) in enumerate(members)}
        spans = sorted(members, key=lambda m: _span(m[1]))
        clusters: list[list[tuple[str, torch.Tensor]]] = []
        end = -1
        for name, t in spans:
            start, stop = _span(t)
            if clusters and start < end:
                clusters[-1].append((name, t))
                end = max(end, stop)
            else:
                clusters.append([(name, t)])
                end = stop
        for cluster in clusters:
            if len(cluster) > 1:
                views.update(_views_of_cluster(sorted(cluster, key=lambda m: order[m[0]])))
    return views


def _views_of_cluster(cluster: list[tuple[str, torch.Tensor]]) -> dict[str, View]:
    names = ", ".join(f"`{n}`" for n, _ in cluster)
    lo = min(_span(t)[0] for _, t in cluster)
    hi = max(_span(t)[1] for _, t in cluster)
    dtypes = {t.dtype for _, t in cluster}
    if len(dtypes) > 1:
        raise TieError(
            f"tensors {names} share memory with different dtypes; store them apart with .clone() first"
        )
    for base_name, base in cluster:
        if base.is_contiguous() and _span(base) == (lo, hi):
            break
    else:
        raise TieError(
            f"tensors {names} overlap in memory but none of them is a contiguous tensor covering the others, "
            "so they cannot be stored as views of one base; .clone() the ones that need not share memory"
        )
    larger = [f"`{n}`" for n, t in cluster if t.numel() > base.numel()]
    if larger:
        raise TieError(
            f"tensors {', '.join(larger)} have more elements than `{base_name}`, whose memory they view "
            "(expanded or overlapping strides); .clone() them to store them"
        )
    return {
        name: View(name, base_name, t.storage_offset() - base.storage_offset(), tuple(t.shape), tuple(t.stride()))
        for name, t in cluster
        if name != base_name
    }


def plan_ties(named: Sequence[tuple[str, torch.Tensor]]) -> TiePlan:
    """Split named tensors into stored tensors, tie groups and views (see the module docstring)."""
    lookup = dict(named)
    groups = _groups(named)
    views = _partial_views([(g[0], lookup[g[0]]) for g in groups])
    ties = tuple(TieGroup(canonical=g[0], aliases=tuple(g[1:])) for g in groups if len(g) > 1)
    stored = tuple(g[0] for g in groups if g[0] not in views)
    ordered_views = tuple(views[g[0]] for g in groups if g[0] in views)
    return TiePlan(stored=stored, ties=ties, views=ordered_views)


def find_ties(model_or_mapping: nn.Module | Mapping[str, torch.Tensor]) -> list[TieGroup]:
    """The tie groups of a module or a named mapping, canonical name first."""
    return list(plan_ties(named_tensors(model_or_mapping)).ties)
