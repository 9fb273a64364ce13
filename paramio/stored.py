"""The stored tensors of whatever the diagnostics examine (a path to any location, a Checkpoint, a model or
a mapping), one tensor at a time, so that statistics, the tie audit, diffs and reports hold a tensor or two
in memory whatever the checkpoint's size."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, collect, from_mapping
from .locations import Location, Source, open_source
from .manifest import GRAD_PREFIX, Manifest, TensorEntry
from .ties import view_of

__all__ = ["Stored", "open_stored", "tensor_bytes_view"]


class Stored:
    """A manifest and its tensors, read when asked (nothing is kept): ``read`` by stored name, ``tensor``
    under any name (an alias gives its canonical, a view is rebuilt over its base)."""

    def __init__(self, manifest: Manifest, label: str, source: Source | None = None,
                 checkpoint: Checkpoint | None = None, verify: bool = True) -> None:
        self.manifest = manifest
        self.label = label
        self.source = source
        self._checkpoint = checkpoint
        self._verify = verify
        self._entries = {t.name: t for t in manifest.tensors}
        self._views = {v.name: v for v in manifest.views}
        self._alias = manifest.alias_map()

    @property
    def verified(self) -> bool:
        """Whether reads check checksums (a path read with ``verify``)."""
        return self.source is not None and self._verify

    def entries(self, *, gradients: bool = False) -> list[TensorEntry]:
        """The stored tensors in manifest (file) order; gradients only when asked."""
        return [t for t in self.manifest.tensors if gradients or t.kind != "gradient"]

    def entry(self, name: str) -> TensorEntry:
        return self._entries[name]

    def canonical(self, name: str) -> str:
        return self._alias.get(name, name)

    def read(self, name: str) -> torch.Tensor:
        """A stored tensor (or gradient) by its manifest name, verified when read from a path."""
        if self.source is not None:
            return self.source.read_entry(self._entries[name], verify=self._verify)
        assert self._checkpoint is not None
        if name.startswith(GRAD_PREFIX):
            return self._checkpoint.grads[name[len(GRAD_PREFIX):]]
        return self._checkpoint[name]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor under any name the manifest maps."""
        canonical = self.canonical(name)
        view = self._views.get(canonical)
        if view is not None:
            return view_of(self.read(view.base), view)
        return self.read(canonical)


def tensor_bytes_view(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as a flat uint8 tensor (no copy when it is contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


@contextlib.contextmanager
def open_stored(source: object, *, verify: bool = True) -> Iterator[Stored]:
    """:class:`Stored` over a path (any location: read one tensor at a time, checksums verified unless
    ``verify=False``), a :class:`Checkpoint`, an ``nn.Module`` or a ``{name: tensor}`` mapping."""
    if isinstance(source, (str, Path, Location)):
        with open_source(source) as opened:
            yield Stored(opened.manifest(), str(source), source=opened, verify=verify)
        return
    if isinstance(source, Checkpoint):
        ck = source
    elif isinstance(source, nn.Module):
        ck = collect(source)
    elif isinstance(source, Mapping):
        ck = from_mapping(source)
    else:
        raise TypeError(f"expected a path, a Checkpoint, a model or a mapping of tensors, not "
                        f"{type(source).__name__}")
    yield Stored(ck.manifest, type(source).__name__, checkpoint=ck)
