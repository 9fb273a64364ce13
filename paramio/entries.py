"""What a state dict holds besides tensors, and the checks that saving runs on names, tensors and metadata
before any I/O (in one place, like safetensors' ``_evaluate_tensors_for_save``).

A model's state dict may hold entries that are not tensors: a module's ``get_extra_state`` (torch's
documented hook, any picklable value) or a dynamically quantized module's packed parameters
(``_packed_params.dtype``, a ``torch.dtype``, and ``_packed_params._packed_params``, a tuple of quantized
tensors). Plain data is not a parameter: it is skipped and its name listed under ``paramio.skipped``, as the
``.pt`` reader does for the non-tensor leaves of a training checkpoint, so the skip stays visible. An entry
that *holds tensors* is refused, naming it and the fix: skipping it would silently drop weights.

Every refusal is a :class:`~paramio.errors.FormatError` (the same class the readers raise for such tensors
in a file) naming the tensor and saying what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from . import limits
from .dtypes import dtype_name
from .errors import FormatError
from .formats.base import SKIPPED_KEY
from .manifest import GRAD_PREFIX
from .upgrades import versions_of

__all__ = ["split_entries", "module_entries", "with_skipped", "check_name", "check_tensor", "check_metadata", "check_savable"]


def _holds_tensor(value: object, depth: int = 0) -> torch.Tensor | None:
    """The first tensor inside a container entry (tuples, lists, dicts), if any."""
    if isinstance(value, torch.Tensor):
        return value
    if depth > 8:
        return None
    items: Iterable[Any] = ()
    if isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    for item in items:
        found = _holds_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


def split_entries(items: Iterable[tuple[object, object]]) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """``(name, tensor)`` pairs in order, and the names of the entries that are plain data (skipped).

    An entry that is not a tensor but holds one (packed quantized parameters, a nested state dict) is a
    :class:`FormatError` naming it."""
    tensors: list[tuple[str, torch.Tensor]] = []
    skipped: list[str] = []
    for name, value in items:
        if not isinstance(name, str):
            raise FormatError(f"entry {name!r}: names are strings (a state dict maps str to tensors)")
        if isinstance(value, torch.Tensor):
            tensors.append((name, value))
            continue
        inner = _holds_tensor(value)
        if inner is None:
            skipped.append(name)
        elif inner.is_quantized:
            raise FormatError(
                f"entry `{name}`: a {type(value).__name__} of quantized tensors (a quantized module's packed "
                "parameters), which paramio cannot store; save the float model before quantizing it (or "
                "torch.save this state dict)"
            )
        else:
            raise FormatError(
                f"entry `{name}`: a {type(value).__name__} holding tensors, not a tensor; give paramio a flat "
                "mapping of names to tensors (e.g. the `state_dict` inside a training checkpoint)"
            )
    return tensors, skipped


def module_entries(model: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], list[str], dict[str, int]]:
    """:func:`split_entries` over ``model.state_dict(keep_vars=True)``, and its modules' version records
    (see :mod:`paramio.upgrades`)."""
    state = model.state_dict(keep_vars=True)
    return (*split_entries(state.items()), versions_of(getattr(state, "_metadata", None)))


def with_skipped(metadata: Mapping[str, str] | None, skipped: list[str]) -> dict[str, str]:
    """``metadata`` with the skipped entries' names listed under ``paramio.skipped`` (JSON)."""
    out = dict(metadata or {})
    if skipped:
        before = out.get(SKIPPED_KEY)
        listed = json.loads(before) if isinstance(before, str) and before.startswith("[") else []
        out[SKIPPED_KEY] = json.dumps([*listed, *(n for n in skipped if n not in listed)])
    return out


def check_name(name: str, *, what: str = "tensor") -> None:
    """Refuse a name that no format could store and read back as given."""
    shown = name[:40] + ("…" if len(name) > 40 else "")
    if not name:
        raise FormatError(f"{what} name '': empty; every tensor needs a name (its state-dict key)")
    if len(name) > limits.MAX_NAME:
        raise FormatError(f"{what} `{shown}`: name of {len(name)} characters, over the limit of {limits.MAX_NAME}; "
                          "rename it")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} {shown!r}: the name is not valid Unicode text (a lone surrogate); names are "
                          "stored as UTF-8, rename it") from None
    if name.startswith(GRAD_PREFIX):
        raise FormatError(f"{what} `{shown}`: names starting with `{GRAD_PREFIX}` are reserved for gradients "
                          f"(saved with grads=True); rename it")


def check_tensor(name: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor that has no dense, typed form to store (sparse, quantized, an unknown dtype)."""
    if tensor.layout != torch.strided:
        raise FormatError(f"tensor `{name}`: a {tensor.layout} tensor; paramio stores dense tensors, call "
                          ".to_dense() first")
    if tensor.is_quantized:
        raise FormatError(f"tensor `{name}`: quantized ({tensor.dtype}); paramio stores plain dtypes, call "
                          ".dequantize() first (or save the model before quantizing it)")
    try:
        dtype_name(tensor.dtype)
    except ValueError as e:
        raise FormatError(f"tensor `{name}`: {e}") from e


def check_metadata(metadata: Mapping[Any, Any] | None) -> None:
    """Metadata maps strings to strings (every format stores it as text)."""
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            bad = key if not isinstance(key, str) else value
            raise FormatError(f"metadata {key!r}: {type(bad).__name__} {bad!r}; metadata maps strings to strings, "
                              "pass str(value) (or json.dumps for structured values)")
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise FormatError(f"metadata {key!r}: not valid Unicode text (a lone surrogate)") from None


def check_savable(name: str, tensor: torch.Tensor) -> None:
    """What saving needs beyond :func:`check_tensor`: values to write."""
    if tensor.is_meta:
        raise FormatError(f"tensor `{name}`: on the meta device, it has no values to save; load a checkpoint "
                          "into the model first (paramio.load_into materializes it) or build it on a real device")
