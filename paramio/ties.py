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

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import TieError
from .manifest import TieGroup, ViewEntry

__all__ = ["View", "TiePlan", "plan_ties", "find_ties", "identity_groups", "named_tensors", "view_of",
           "tie_partition", "tie_differences"]


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
    Entries that are not tensors (a module's ``get_extra_state``, packed quantized parameters) are left out:
    they cannot be tied (see :mod:`paramio.entries` for what saving does with them).
    """
    if isinstance(obj, nn.Module):
        items = obj.state_dict(keep_vars=True).items()
    elif isinstance(obj, Mapping):
        items = obj.items()
    else:
        raise TypeError(f"expected an nn.Module or a mapping of names to tensors, got {type(obj).__name__}")
    return [(n, t) for n, t in items if isinstance(t, torch.Tensor)]


_LAZY = nn.parameter.UninitializedTensorMixin


def _memory_key(t: torch.Tensor) -> tuple | None:
    """What makes two tensors the same view: where their first element lies (:func:`_place`), shape,
    strides and dtype. None for tensors whose memory cannot be compared (empty, lazy, on the meta device,
    or sparse): object identity is the only evidence for those."""
    if isinstance(t, _LAZY) or t.is_meta or t.layout != torch.strided or not t.numel():
        return None
    return (*_place(t), t.shape, t.stride(), t.dtype)


def _place(t: torch.Tensor) -> tuple[object, int]:
    """``(region, byte position)`` of a tensor's first element; tensors overlap only within one region.

    On the CPU and CUDA the region is the device and the position ``data_ptr()``, a real address: one call
    instead of building a storage object per tensor, which matters at tens of thousands of tensors, and
    storages that wrap the same memory are seen to share it. Elsewhere ``data_ptr()`` need not be an
    address (on MPS it is a Metal buffer's handle, and unrelated handles lie a few bytes apart): the region
    is then the storage and the position the tensor's byte offset in it."""
    if t.is_cpu or t.is_cuda:
        return t.device, t.data_ptr()
    return _storage_place(t)


def _storage_place(t: torch.Tensor) -> tuple[object, int]:
    """:func:`_place` by storage: the region is the device and the storage, the position a byte offset."""
    return (t.device, t.untyped_storage().data_ptr()), t.storage_offset() * t.element_size()


def _extent(t: torch.Tensor) -> int:
    """Bytes from a non-empty tensor's first element to the end of its last one."""
    if t.is_contiguous():
        return t.nbytes
    return (sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) + 1) * t.element_size()


def _keyed_groups(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[list[list[str]], list[tuple | None]]:
    """Names grouped by identity (same object or same view), groups in first-appearance order; with the
    memory key of each group's first tensor."""
    by_id: dict[int, int] = {}
    by_key: dict[tuple, int] = {}
    groups: list[list[str]] = []
    keys: list[tuple | None] = []
    for name, t in named:
        found = by_id.get(id(t))
        if found is None:  # a new object (the same object again needs no key: it is in its group)
            key = _memory_key(t)
            if key is not None:
                found = by_key.get(key)
            if found is None:
                found = len(groups)
                groups.append([])
                keys.append(key)
            by_id[id(t)] = found
            if key is not None:
                by_key.setdefault(key, found)
        groups[found].append(name)
    return groups, keys


def identity_groups(named: Sequence[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Names grouped by identity (same object or same view), canonical first, in first-appearance order;
    partial aliases are not considered."""
    return _keyed_groups(named)[0]


def _partial_views(reps: Sequence[tuple[str, torch.Tensor, tuple | None]]) -> dict[str, View]:
    """Views for representatives that overlap another in memory; TieError when no faithful base exists.

    Overlap is found per region (:func:`_place`): sorted by start, a tensor that starts before the previous
    ones end joins their cluster. Distinct memory never overlaps, so only real sharing clusters."""
    by_region: dict[object, list[tuple[int, int, int]]] = {}
    for i, (_, t, key) in enumerate(reps):
        if key is not None:
            by_region.setdefault(key[0], []).append((key[1], key[1] + _extent(t), i))
    clusters: list[list[tuple[int, int]]] = []
    for spans in by_region.values():
        spans.sort()
        end = -1
        for start, stop, i in spans:
            if start < end:
                clusters[-1].append((i, start))
            else:
                clusters.append([(i, start)])
            end = max(end, stop)
    views: dict[str, View] = {}
    for cluster in clusters:
        if len(cluster) > 1:
            views.update(_views_of_cluster([(*reps[i][:2], start) for i, start in sorted(cluster)]))
    return views


def _views_of_cluster(cluster: list[tuple[str, torch.Tensor, int]]) -> dict[str, View]:
    """``cluster``: tensors that overlap in memory, in registration order, with their start positions."""
    names = ", ".join(f"`{n}`" for n, _, _ in cluster)
    dtypes = {t.dtype for _, t, _ in cluster}
    if len(dtypes) > 1:
        raise TieError(
            f"tensors {names} share memory with different dtypes; store them apart with .clone() first"
        )
    lo = min(start for _, _, start in cluster)
    hi = max(start + _extent(t) for _, t, start in cluster)
    for base_name, base, start in cluster:
        if base.is_contiguous() and start == lo and base.nbytes == hi - lo:
            break
    else:
        raise TieError(
            f"tensors {names} overlap in memory but none of them is a contiguous tensor covering the others, "
            "so they cannot be stored as views of one base; .clone() the ones that need not share memory"
        )
    larger = [f"`{n}`" for n, t, _ in cluster if t.numel() > base.numel()]
    if larger:
        raise TieError(
            f"tensors {', '.join(larger)} have more elements than `{base_name}`, whose memory they view "
            "(expanded or overlapping strides); .clone() them to store them"
        )
    size = base.element_size()
    misaligned = [f"`{n}`" for n, _, start in cluster if (start - lo) % size]
    if misaligned:
        raise TieError(f"tensors {', '.join(misaligned)} start between two elements of `{base_name}`, whose memory "
                       "they share; .clone() them to store them")
    return {
        name: View(name, base_name, (start - lo) // size, tuple(t.shape), tuple(t.stride()))
        for name, t, start in cluster
        if name != base_name
    }


def plan_ties(named: Sequence[tuple[str, torch.Tensor]]) -> TiePlan:
    """Split named tensors into stored tensors, tie groups and views (see the module docstring)."""
    lookup = dict(named)
    groups, keys = _keyed_groups(named)
    views = _partial_views([(g[0], lookup[g[0]], key) for g, key in zip(groups, keys, strict=True)])
    ties = tuple(TieGroup(canonical=g[0], aliases=tuple(g[1:])) for g in groups if len(g) > 1)
    stored = tuple(g[0] for g in groups if g[0] not in views)
    ordered_views = tuple(views[g[0]] for g in groups if g[0] in views)
    return TiePlan(stored=stored, ties=ties, views=ordered_views)


def find_ties(model_or_mapping: nn.Module | Mapping[str, torch.Tensor]) -> list[TieGroup]:
    """The tie groups of a module or a named mapping, canonical name first."""
    return list(plan_ties(named_tensors(model_or_mapping)).ties)


def view_of(base: torch.Tensor, view: View | ViewEntry) -> torch.Tensor:
    """The partial alias ``view`` rebuilt over ``base`` (offset and strides count the base's flat elements)."""
    return base.as_strided(view.shape, view.stride, base.storage_offset() + view.offset)


def tie_partition(names: Iterable[str], ties: Iterable[TieGroup]) -> dict[str, frozenset[str]]:
    """name -> the set of names tied to it (itself included)."""
    out = {n: frozenset([n]) for n in names}
    for group in ties:
        members = frozenset(group.names)
        for n in members:
            out[n] = members
    return out


def tie_differences(a: Mapping[str, frozenset[str]], b: Mapping[str, frozenset[str]]
                    ) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """``(name, tied in a, tied in b)`` for each name in both whose ties differ (restricted to the names both
    have), once per difference, in ``a``'s order."""
    out = []
    reported: set[frozenset[str]] = set()
    common: Collection[str] = b.keys()
    for name, group in a.items():
        if name not in common:
            continue
        ga, gb = frozenset(group & common), frozenset(b[name] & a.keys())
        if ga != gb and (ga | gb) not in reported:
            reported.add(ga | gb)
            out.append((name, ga, gb))
    return out
