"""The dtype vocabulary of the manifest: torch dtypes by stable names.

One table so that every format and the manifest agree on which dtypes exist; each format maps these names
to its own type codes.
"""

from __future__ import annotations

import torch

from .dtype_names import FLOATING, NAMES

__all__ = ["DTYPES", "dtype_name", "torch_dtype", "is_floating"]

#: manifest name -> torch dtype, in the fixed order of :data:`paramio.dtype_names.NAMES`.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in NAMES}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of a torch dtype; ``ValueError`` for dtypes paramio does not store."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} is not supported; supported: {', '.join(DTYPES)}") from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a manifest name."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None


def is_floating(name: str) -> bool:
    """Whether ``--dtype`` casts apply to tensors of this dtype (real floating point only)."""
    return name in FLOATING
