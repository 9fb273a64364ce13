"""Per-tensor checksums: xxh3-64 by default (fast enough to hide behind disk writes), sha256 on request."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import xxhash

__all__ = ["ALGORITHMS", "resolve", "tensor_bytes", "digest", "placeholder", "algorithm_of"]

ALGORITHMS = ("xxh3_64", "sha256")
_HEX_LENGTH = {"xxh3_64": 16, "sha256": 64}


def resolve(checksum: str | None) -> str | None:
    """Map the user's ``checksum=`` choice to an algorithm name (None: no checksums)."""
    if checksum is None or checksum == "none":
        return None
    if checksum in ("default", "xxh3", "xxh3_64"):
        return "xxh3_64"
    if checksum == "sha256":
        return "sha256"
    raise ValueError(f"checksum={checksum!r}: choose 'default' (xxh3_64), 'sha256' or None")


#: dtypes numpy lacks, seen as the unsigned integers of their size (their bits are what is hashed).
_BITS = {torch.bfloat16: torch.uint16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's data as a C-ordered buffer of its little-endian bytes, without a copy when it is a
    contiguous CPU tensor (the usual case, so that path costs about a microsecond: 20,000 small tensors
    are hashed in a few milliseconds)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_cpu:
        tensor = tensor.to("cpu")
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    bits = _BITS.get(tensor.dtype)
    try:
        return (tensor if bits is None else tensor.view(bits)).numpy()
    except TypeError:  # another dtype numpy lacks: its raw bytes
        return tensor.reshape(-1).view(torch.uint8).numpy()


def digest(data: np.ndarray | memoryview | bytes, algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` for the given bytes."""
    if algorithm == "xxh3_64":
        return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)
    if algorithm == "sha256":
        return "sha256:" + hashlib.sha256(data).hexdigest()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def placeholder(algorithm: str) -> str:
    """A checksum string of the final length, for headers written before the data is hashed."""
    return f"{algorithm}:" + "0" * _HEX_LENGTH[algorithm]


def algorithm_of(checksum: str) -> str:
    return checksum.split(":", 1)[0]
