"""Checkpoint: named tensors in memory, every alias mapping to the very same tensor object, with the
manifest that describes them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import pydantic
import torch
from torch import nn

from ._version import __version__
from . import limits
from .dtypes import DTYPES, dtype_name, torch_dtype
from .entries import check_metadata, check_name, check_tensor, module_entries, split_entries, with_skipped
from .errors import InternalError, UninitializedParameterError
from .manifest import GRAD_PREFIX, Manifest, Producer, TensorEntry, TieGroup, ViewEntry
from .ties import plan_ties
from .upgrades import VERSIONS_KEY

__all__ = ["Checkpoint", "collect", "from_mapping", "producer"]


def producer() -> Producer:
    return Producer(name="paramio", version=__version__, torch=torch.__version__.split("+")[0])


class Checkpoint(Mapping[str, torch.Tensor]):
    """A ``Mapping[str, Tensor]`` over every name, aliases included (``ck[alias] is ck[canonical]``).

    ``.manifest`` describes the stored tensors and ties; ``.grads`` maps parameter names to gradients
    (empty unless gradients were collected or saved); ``.metadata`` is the user's str -> str metadata.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        manifest: Manifest,
        grads: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._tensors = dict(tensors)
        self._manifest = manifest
        self._grads = dict(grads or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return (
            f"Checkpoint({len(self._manifest.tensors)} stored tensors, {len(self)} names, "
            f"{len(self._manifest.ties)} tie groups, {len(self._grads)} gradients)"
        )

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def ties(self) -> tuple[TieGroup, ...]:
        return self._manifest.ties

    @property
    def grads(self) -> Mapping[str, torch.Tensor]:
        return self._grads

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._manifest.metadata)

    def stored(self) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
        """(entry, tensor) for each stored tensor in manifest order, gradients included."""
        for entry in self._manifest.tensors:
            if entry.kind == "gradient":
                yield entry, self._grads[entry.name[len(GRAD_PREFIX) :]]
            else:
                yield entry, self._tensors[entry.name]


def _check_initialized(named: list[tuple[str, torch.Tensor]]) -> None:
    for name, t in named:
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise UninitializedParameterError(
                f"tensor `{name}`: uninitialized lazy parameter. Run a forward pass (or `paramio export "
                f"--example-input`) or load a checkpoint into the model first."
            )


#: torch dtypes that have a manifest name (quantized ones have none).
_KNOWN_DTYPES = frozenset(torch_dtype(name) for name in DTYPES)


def _check(named: list[tuple[str, torch.Tensor]], grads: Mapping[str, torch.Tensor],
           metadata: Mapping[str, str] | None) -> None:
    """Names, tensors and metadata that no manifest could describe, refused before anything else runs."""
    _check_initialized(named)
    longest, strided, known = limits.MAX_NAME, torch.strided, _KNOWN_DTYPES
    for name, t in named:  # the common case in one cheap test each (20,000 tensors: ~10 ms, not 40)
        if not name or len(name) > longest or name.startswith(GRAD_PREFIX) or not name.isascii():
            check_name(name)
        if t.layout is not strided or t.dtype not in known:
            check_tensor(name, t)
    for name, grad in grads.items():
        if grad is not None:
            check_tensor(GRAD_PREFIX + name, grad)
    check_metadata(metadata)


def _build(
    named: list[tuple[str, torch.Tensor]],
    kinds: Mapping[str, str],
    grads: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None,
    model_class: str | None,
) -> Checkpoint:
    _check(named, grads, metadata)
    plan = plan_ties(named)
    lookup = dict(named)
    canonical_of = {a: g.canonical for g in plan.ties for a in g.aliases}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in named:
        if name in canonical_of:
            tensors[name] = tensors[canonical_of[name]]
        else:  # a plain tensor outside autograd is kept as it is (detaching costs a new object per tensor)
            tensors[name] = t if type(t) is torch.Tensor and not t.requires_grad else t.detach()
    entries = []
    for name in plan.stored:
        t = lookup[name]
        entries.append(
            TensorEntry(name=name, dtype=dtype_name(t.dtype), shape=tuple(t.shape), kind=kinds.get(name, "parameter"),
                        requires_grad=bool(t.requires_grad), checksum=None)
        )
    stored_grads = {}
    for name in plan.stored if grads else ():
        grad = grads.get(name)
        if grad is not None:
            stored_grads[name] = grad.detach()
            entries.append(
                TensorEntry(name=GRAD_PREFIX + name, dtype=dtype_name(grad.dtype), shape=tuple(grad.shape),
                            kind="gradient")
            )
    views = tuple(
        ViewEntry(name=v.name, base=v.base, offset=v.offset, shape=v.shape, stride=v.stride,
                  kind=kinds.get(v.name, "parameter"), requires_grad=bool(lookup[v.name].requires_grad))
        for v in plan.views
    )
    try:
        manifest = Manifest(producer=producer(), model_class=model_class, tensors=tuple(entries), views=views,
                            ties=plan.ties, metadata=dict(metadata or {}))
    except pydantic.ValidationError as e:  # _check refuses what users can get wrong: this is a bug
        raise InternalError(f"the manifest built from these tensors is invalid: "
                          f"{e.errors()[0]['msg']}") from e
    return Checkpoint(tensors, manifest, stored_grads)


def collect(model: nn.Module, *, grads: bool = False, buffers: bool = True,
            metadata: Mapping[str, str] | None = None) -> Checkpoint:
    """Every parameter and persistent buffer of ``model`` by name, aliases included, sharing its memory.

    Raises :class:`UninitializedParameterError` for lazy parameters that have no shape yet. State-dict
    entries that are not tensors (``get_extra_state``) are skipped and listed under ``paramio.skipped``;
    module versions other than 1 (BatchNorm's 2) are recorded under ``paramio.module_versions``.
    """
    named, skipped, versions = module_entries(model)
    metadata = with_skipped(metadata, skipped)
    if versions:
        metadata[VERSIONS_KEY] = json.dumps(versions)
    buffer_names = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    if not buffers:
        named = [(n, t) for n, t in named if n not in buffer_names]
    kinds = {n: ("buffer" if n in buffer_names else "parameter") for n, _ in named}
    grad_map = {n: t.grad for n, t in named if grads and t.grad is not None}
    cls = type(model)
    return _build(named, kinds, grad_map, metadata, f"{cls.__module__}.{cls.__qualname__}")


def from_mapping(mapping: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None,
                 grads: Mapping[str, torch.Tensor] | None = None) -> Checkpoint:
    """A checkpoint over a plain ``{name: tensor}`` dict; shared memory becomes tie groups and views.
    Entries that are plain data are skipped and listed under ``paramio.skipped`` (see :mod:`paramio.entries`).

    Tensors outside autograd are kept as given (they share memory with the checkpoint either way); others
    are detached."""
    named, skipped = split_entries(mapping.items())
    metadata = with_skipped(metadata, skipped)
    kinds = {n: ("parameter" if t.is_floating_point() or isinstance(t, nn.Parameter) else "buffer")
             for n, t in named}
    return _build(named, kinds, dict(grads or {}), metadata, None)
