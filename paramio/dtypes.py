"""The dtype vocabulary of the manifest: torch dtypes by stable names.

One table so that every format and the manifest agree on which dtypes exist; each format maps these names
to its own type codes.
"""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "dtype_name", "torch_dtype", "is_floating"]

#: manifest name -> torch dtype, in a fixed order (the manifest schema lists them in this order).
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint64": torch.uint64,
    "uint32": torch.uint32,
    "uint16": torch.uint16,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
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
    return DTYPES[name].is_floating_point
