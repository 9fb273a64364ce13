"""Per-tensor checksums: xxh3-64 by default (fast enough to hide behind disk writes), sha256 on request."""

from __future__ import annotations

import hashlib

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


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's data as little-endian bytes in C order, without a copy when it is contiguous."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def digest(data: memoryview | bytes, algorithm: str) -> str:
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
