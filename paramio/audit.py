"""The tie audit: what a checkpoint's bytes suggest about identity beyond what it records.

- *Suspected lost ties*: stored tensors with equal dtype, shape and bytes and no tie recorded (a head saved
  as a copy of the embedding). Candidates come from the checksums (computed where the file has none), then
  the bytes are compared. Tensors whose elements are all equal (fresh LayerNorm weights, zero biases, scalar
  counters) are left out: they are equal by initialization, and nothing says they were ever one tensor.
- With a model (or signature), per model tie group: stored as equal copies (*restorable*: ``load_into``
  ties them again), stored with different values (*mismatched*: a problem), or aliases the file neither
  stores nor records (*dropped* by an exporter: ``load_into`` fills them from their canonical).

The audit reports; it never makes a tie from equal values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checksum import algorithm_of, digest, tensor_bytes
from .manifest import Manifest, Signature, SignatureEntry, TieGroup
from .stored import Stored, open_stored, tensor_bytes_view

__all__ = ["Audit", "audit", "audit_stored", "as_loaded", "digest_candidates"]

#: The algorithm of the digests the audit computes for tensors stored without a checksum.
_ALGORITHM = "xxh3_64"


@dataclass(frozen=True)
class Audit:
    """The findings, each a tuple of name groups (in file order); ``notes`` and ``problems`` are the lines
    that ``validate`` prints. Only ``mismatched`` is a problem."""

    suspected_ties: tuple[tuple[str, ...], ...] = ()
    restorable: tuple[tuple[str, ...], ...] = ()
    mismatched: tuple[tuple[str, ...], ...] = ()
    dropped: tuple[str, ...] = ()
    dropped_from: Mapping[str, str] = field(default_factory=dict)  # dropped alias -> its canonical

    @property
    def notes(self) -> tuple[str, ...]:
        lines = [f"suspected lost tie: {_names(g)} hold equal dtype, shape and bytes but no tie is recorded "
                 "(saved as copies?); paramio keeps them separate" for g in self.suspected_ties]
        lines += [f"tie group {_names(g)}: the model ties them and the file stores equal copies; load_into "
                  "ties them again" for g in self.restorable]
        lines += [f"alias `{a}`: the model ties it to `{self.dropped_from[a]}`; the file neither stores nor "
                  "records it (dropped by the exporter); load_into fills it" for a in self.dropped]
        return tuple(lines)

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(f"tie group {_names(g)}: one tensor in the model, but the file stores them with different "
                     "values (a tie broken since it was saved)" for g in self.mismatched)

    @property
    def clean(self) -> bool:
        """Nothing to say."""
        return not (self.suspected_ties or self.restorable or self.mismatched or self.dropped)


def _names(group: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in group)


def audit(source: object, against: nn.Module | Signature | str | Path | None = None, *,
          verify: bool = True) -> Audit:
    """The tie audit of ``source`` (a path to any location, a Checkpoint, a model or a mapping), and with
    ``against`` (a model, Signature or signature JSON path) of the model's ties too."""
    from .validation import signature  # validation uses the audit

    expected = signature(against) if against is not None else None
    with open_stored(source, verify=verify) as stored:
        return audit_stored(stored, expected)


def audit_stored(stored: Stored, expected: Signature | None = None,
                 digests: Mapping[str, str] | None = None) -> Audit:
    """The audit over an opened :class:`Stored`; ``digests`` (name -> checksum string) are hashes already
    computed by a caller's pass over the data, so that tensors are not hashed twice."""
    model_groups = [g.names for g in expected.ties] if expected is not None else []
    restorable, mismatched, dropped = _model_ties(stored, model_groups)
    declared = [set(g) for g in model_groups]
    suspected = [g for g in _equal_groups(stored, digests or {})
                 if not any(set(g) <= d for d in declared)]
    return Audit(suspected_ties=tuple(suspected), restorable=tuple(restorable), mismatched=tuple(mismatched),
                 dropped=tuple(dropped), dropped_from=dict(dropped.items()))


# -- stored tensors that look like one ----------------------------------------------------------------------
def _same_layout(manifest: Manifest) -> list[list[str]]:
    """Stored tensors (parameters and buffers, more than one element) grouped by dtype and shape, groups of
    two or more only: the only tensors that can hold equal bytes."""
    by_shape: dict[tuple, list[str]] = {}
    for entry in manifest.tensors:
        if entry.kind != "gradient" and entry.numel > 1:
            by_shape.setdefault((entry.dtype, entry.shape), []).append(entry.name)
    return [names for names in by_shape.values() if len(names) > 1]


def digest_candidates(manifest: Manifest) -> set[str]:
    """The stored tensors whose digest the audit needs and the manifest lacks: a pass over the data that
    reads them anyway (validate's) hashes these and hands them to :func:`audit_stored`."""
    sums = {t.name: t.checksum or "" for t in manifest.tensors}
    return {n for names in _same_layout(manifest) for n in names if not sums[n].startswith(_ALGORITHM + ":")}


def _equal_groups(stored: Stored, digests: Mapping[str, str]) -> list[tuple[str, ...]]:
    """Groups of stored tensors (parameters and buffers) with equal dtype, shape and bytes, none constant."""
    groups: list[tuple[str, ...]] = []
    for names in _same_layout(stored.manifest):
        by_sum: dict[str, list[str]] = {}
        for name in names:
            by_sum.setdefault(_digest_of(stored, name, digests), []).append(name)
        for bucket in by_sum.values():
            groups += _confirm(stored, bucket)
    order = {e.name: i for i, e in enumerate(stored.manifest.tensors)}
    return sorted(groups, key=lambda g: order[g[0]])


def _digest_of(stored: Stored, name: str, digests: Mapping[str, str]) -> str:
    """A checksum of the tensor's bytes: the caller's, the manifest's (of the audit's algorithm, when
    reads verify it, or the file is ours to trust), or one computed now."""
    if name in digests:
        return digests[name]
    recorded = stored.entry(name).checksum
    if recorded is not None and algorithm_of(recorded) == _ALGORITHM:
        return recorded
    return digest(tensor_bytes(stored.read(name)), _ALGORITHM)


def _confirm(stored: Stored, bucket: list[str]) -> list[tuple[str, ...]]:
    """Split names with one checksum into groups of truly equal bytes (two tensors in memory at a time)."""
    groups = []
    remaining = bucket
    while len(remaining) > 1:
        first, rest = remaining[0], []
        tensor = stored.read(first)
        ref = tensor_bytes_view(tensor)
        if _constant(tensor):
            remaining = remaining[1:]  # the others, of equal bytes, are constant too, or go on to the next round
            continue
        group = [first]
        for name in remaining[1:]:
            (group if torch.equal(ref, tensor_bytes_view(stored.read(name))) else rest).append(name)
        if len(group) > 1:
            groups.append(tuple(group))
        remaining = rest
    return groups


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _constant(t: torch.Tensor) -> bool:
    """Whether every element has the same bytes as the first."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() < 2:
        return True
    size = flat.element_size()
    if size in _INT_OF_SIZE:
        bits = flat.view(_INT_OF_SIZE[size])
    else:  # complex128: two 8-byte halves
        bits = flat.view(torch.int64).reshape(flat.numel(), -1)
    return bool((bits == bits[0]).all())


# -- the model's ties against the file ------------------------------------------------------------------------
def _model_ties(stored: Stored, groups: list[tuple[str, ...]]
                ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], dict[str, str]]:
    """(restorable, mismatched, dropped alias -> canonical) for the model's tie groups."""
    names = set(stored.manifest.names())
    restorable, mismatched = [], []
    dropped: dict[str, str] = {}
    for group in groups:
        present = [n for n in group if n in names]
        if not present:
            continue  # nothing of it in the file: a plain missing tensor, for the signature check
        dropped.update((n, present[0]) for n in group if n not in names)
        by_key: dict[str, str] = {}
        for n in present:
            by_key.setdefault(stored.canonical(n), n)
        copies = list(by_key.values())
        if len(copies) < 2:
            continue
        (restorable if _all_equal(stored, copies) else mismatched).append(tuple(present))
    return restorable, mismatched, dropped


def _all_equal(stored: Stored, names: list[str]) -> bool:
    """Whether the tensors under ``names`` hold equal dtype, shape and bytes."""
    first = stored.tensor(names[0])
    ref = tensor_bytes_view(first)
    for name in names[1:]:
        other = stored.tensor(name)
        if other.dtype != first.dtype or other.shape != first.shape:
            return False
        if not torch.equal(ref, tensor_bytes_view(other)):
            return False
    return True


def as_loaded(actual: Signature, found: Audit) -> Signature:
    """The signature ``load_into`` gives a model from a file with these findings: restorable and mismatched
    copies (the latter reported by the audit itself) tied, dropped aliases filled. Validation compares the
    model against this, so that it agrees with ``load_into``."""
    view_names = {v.name for v in actual.views}
    merges = [set(g) for g in (*found.restorable, *found.mismatched) if not set(g) & view_names]
    partition: dict[str, set[str]] = {}
    for group in actual.ties:
        for n in group.names:
            partition[n] = set(group.names)
    for merge in merges:
        union = set().union(*(partition.get(n, {n}) for n in merge))
        for n in union:
            partition[n] = union
    stored_order = [t.name for t in actual.tensors] + [v.name for v in actual.views]
    rank = {n: i for i, n in enumerate(stored_order)}
    keep: list[SignatureEntry] = []
    ties: dict[str, list[str]] = {}
    for t in actual.tensors:
        group = partition.get(t.name, {t.name})
        canonical = min((n for n in group if n in rank), key=rank.__getitem__)
        if canonical == t.name:
            keep.append(t)
            others = sorted((n for n in group if n != canonical), key=lambda n: (rank.get(n, len(rank)), n))
            if others:
                ties[canonical] = others
    for group in actual.ties:  # ties whose canonical is a view stay as they were
        if group.canonical not in ties and any(v.name == group.canonical for v in actual.views):
            ties[group.canonical] = list(group.aliases)
    for alias, canonical in found.dropped_from.items():
        root = next((c for c, members in ties.items() if canonical == c or canonical in members), None)
        if root is not None:
            ties[root].append(alias)
        else:
            ties[canonical] = [alias]
    groups = tuple(TieGroup(canonical=c, aliases=tuple(a)) for c, a in ties.items() if a)
    return Signature(tensors=tuple(keep), views=actual.views, ties=groups)
