"""Saving: turn a model, mapping or checkpoint into a manifest plus a stream of tensors, and write them
through a format's writer atomically, one tensor at a time, checksumming on the way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import staged
from .checkpoint import Checkpoint, collect, from_mapping
from .checksum import digest, placeholder, resolve, tensor_bytes
from .dtypes import dtype_name, is_floating, torch_dtype
from .errors import FormatError, ParamioError
from .formats.base import Format
from .formats.registry import for_path
from .manifest import Manifest, TensorEntry

__all__ = ["save", "write_stream", "as_checkpoint", "cast_manifest", "parse_dtype"]

_DTYPE_SHORT = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "f16": "float16",
                "fp32": "float32", "f32": "float32", "float": "float32", "fp64": "float64", "f64": "float64",
                "double": "float64", "fp8": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def parse_dtype(dtype: str | torch.dtype | None) -> str | None:
    """A floating dtype name from ``torch.bfloat16``, ``"bf16"``, ``"bfloat16"`` …"""
    if dtype is None:
        return None
    name = dtype_name(dtype) if isinstance(dtype, torch.dtype) else _DTYPE_SHORT.get(dtype.lower(), dtype.lower())
    if name not in ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"):
        raise ValueError(f"dtype {dtype!r}: casts go to a floating dtype (bf16, fp16, fp32, fp64, e4m3, e5m2)")
    return name


def cast_manifest(manifest: Manifest, dtype: str | None) -> Manifest:
    """The manifest with floating tensors' dtype replaced (checksums dropped: the bytes change)."""
    if dtype is None:
        return manifest
    tensors = tuple(
        t.model_copy(update={"dtype": dtype if is_floating(t.dtype) else t.dtype, "checksum": None})
        for t in manifest.tensors
    )
    return manifest.model_copy(update={"tensors": tensors})


def as_checkpoint(obj: nn.Module | Mapping[str, torch.Tensor] | Checkpoint, *, grads: bool,
                  metadata: Mapping[str, str] | None) -> Checkpoint:
    if isinstance(obj, Checkpoint):
        if metadata:
            manifest = obj.manifest.model_copy(update={"metadata": {**obj.metadata, **metadata}})
            manifest = Manifest.model_validate_json(manifest.to_json())  # re-run validators (sorting)
            return Checkpoint(dict(obj), manifest, obj.grads)
        return obj
    if isinstance(obj, nn.Module):
        return collect(obj, grads=grads, metadata=metadata)
    if isinstance(obj, Mapping):
        return from_mapping(obj, metadata=metadata)
    raise TypeError(f"save() takes an nn.Module, a mapping of names to tensors or a Checkpoint, "
                    f"not {type(obj).__name__}")


def write_stream(fmt: type[Format], path: str | Path, manifest: Manifest,
                 items: Iterable[tuple[TensorEntry, torch.Tensor]], *, checksum: str | None = "default",
                 options: Mapping[str, Any] | None = None) -> Manifest:
    """Write ``items`` (in manifest order) to ``path`` atomically; return the manifest with checksums.

    Tensors are cast to their entry's dtype and moved to the CPU one at a time, so a stream that reads
    lazily (``convert``) holds a single tensor in memory.
    """
    path = Path(path)
    algorithm = resolve(checksum)
    draft = manifest.model_copy(update={"tensors": tuple(
        t.model_copy(update={"checksum": placeholder(algorithm) if algorithm else None}) for t in manifest.tensors
    )})
    final_entries = []
    try:
        with staged() as staging:
            temp = staging.temp_for(path)
            writer = fmt.writer(temp, path, staging, draft, dict(options or {}))
            try:
                for entry, tensor in items:
                    expected = draft.tensors[len(final_entries)]
                    if entry.name != expected.name:
                        raise FormatError(f"internal error: tensor `{entry.name}` given where `{expected.name}` was due")
                    data = tensor.detach().to(device="cpu", dtype=torch_dtype(expected.dtype)).contiguous()
                    if tuple(data.shape) != expected.shape:
                        raise FormatError(f"tensor `{entry.name}`: shape {tuple(data.shape)}, manifest says {expected.shape}")
                    writer.write_tensor(expected, data)
                    sum_ = digest(tensor_bytes(data), algorithm) if algorithm else None
                    final_entries.append(expected.model_copy(update={"checksum": sum_}))
                    del data
                if len(final_entries) != len(draft.tensors):
                    raise FormatError("internal error: fewer tensors given than the manifest lists")
                final = draft.model_copy(update={"tensors": tuple(final_entries)})
                writer.finish(final)
            except BaseException:
                writer.abort()
                raise
    except ParamioError:
        raise
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from e
    return final


def save(obj: nn.Module | Mapping[str, torch.Tensor] | Checkpoint, path: str | Path, *,
         format: str | None = None, example_inputs: Any = None, grads: bool = False,
         dtype: str | torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
         checksum: str | None = "default", **options: Any) -> Manifest:
    """Save every parameter (aliases stored once, ties recorded) to ``path``; return the written manifest."""
    fmt = for_path(path, format)
    unknown = set(options) - set(fmt.options)
    if unknown:
        raise TypeError(f"save() got options {sorted(unknown)} that format {fmt.name} does not take")
    ck = as_checkpoint(obj, grads=grads, metadata=metadata)
    manifest = cast_manifest(ck.manifest, parse_dtype(dtype))
    opts = {**options, "example_inputs": example_inputs,
            "model": obj if isinstance(obj, nn.Module) else None}
    return write_stream(fmt, path, manifest, ck.stored(), checksum=checksum, options=opts)
