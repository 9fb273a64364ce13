"""Saving: turn a model, mapping or checkpoint into a manifest plus a stream of tensors, and write them
through a format's writer atomically, one tensor at a time, checksumming on the way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import limits
from ._gc import paused_gc
from .atomic import staged
from .checkpoint import Checkpoint, collect, from_mapping
from .checksum import resolve
from .dtype_names import cast_name
from .dtypes import DTYPES, dtype_name, is_floating
from .entries import check_metadata, check_savable
from .errors import FormatError, InternalError, ParamioError
from .formats.registry import by_name
from .locations import Location, locate_output, open_sink
from .manifest import Manifest, TensorEntry

__all__ = ["save", "write_stream", "as_checkpoint", "cast_manifest", "parse_dtype"]


def parse_dtype(dtype: str | torch.dtype | None) -> str | None:
    """A floating dtype name from ``torch.bfloat16``, ``"bf16"``, ``"bfloat16"`` …"""
    if dtype is None:
        return None
    return cast_name(dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype)


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
        check_metadata(metadata)
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


@paused_gc
def write_stream(location: Location, manifest: Manifest, items: Iterable[tuple[TensorEntry, torch.Tensor]], *,
                 checksum: str | None = "default", options: Mapping[str, Any] | None = None,
                 durable: bool = True) -> Manifest:
    """Write ``items`` (in manifest order) to ``location`` atomically; return the manifest with checksums.

    Tensors are cast to their entry's dtype and moved to the CPU one at a time, so a stream that reads
    lazily (``convert``) holds a single tensor in memory. ``durable``: see :mod:`paramio.atomic`.
    """
    algorithm = resolve(checksum)
    entries = manifest.tensors
    _check_caps(location, manifest)
    try:
        with staged(durable) as staging:
            sink = open_sink(location, staging, manifest, algorithm, dict(options or {}))
            try:
                count = 0
                for entry, tensor in items:
                    expected = entries[count] if count < len(entries) else None
                    if expected is None or entry.name != expected.name:
                        due = f"`{expected.name}` was due" if expected else "the manifest lists no more"
                        raise InternalError(f"tensor `{entry.name}` given where {due}")
                    data = _prepared(tensor, DTYPES[expected.dtype])
                    if data.shape != expected.shape:
                        raise FormatError(f"tensor `{entry.name}`: shape {tuple(data.shape)}, manifest says "
                                          f"{expected.shape}")
                    sink.write(expected, data)
                    count += 1
                    del data
                if count != len(entries):
                    raise InternalError("fewer tensors given than the manifest lists")
                return sink.finish()
            except BaseException:
                sink.abort()
                raise
    except ParamioError:
        raise
    except OSError as e:
        raise FormatError(f"{location}: cannot write: {e.strerror or e}") from e


def _check_caps(location: Location, manifest: Manifest) -> None:
    """Refuse, before writing, a checkpoint that reading would refuse (:mod:`paramio.limits`): more tensors
    than the cap, or a manifest longer than it. The manifest is serialized only when a cheap upper bound of
    its length (names escaped at worst, 21 characters a dimension, a few hundred for each entry's other fields) reaches
    the cap, so that ordinary saves do not pay for it."""
    count = len(manifest.tensors)
    if count > limits.MAX_TENSORS:
        raise FormatError(f"{location}: {count} tensors, more than the cap of {limits.MAX_TENSORS} that reading "
                          "enforces; save them as several checkpoints")
    names = sum(len(t.name) for t in manifest.tensors) + sum(len(v.name) + len(v.base) for v in manifest.views)
    names += sum(len(n) for g in manifest.ties for n in g.names)
    text = sum(len(k) + len(v) for k, v in manifest.metadata.items()) + len(manifest.model_class or "")
    dims = sum(len(t.shape) for t in manifest.tensors) + sum(2 * len(v.shape) for v in manifest.views)
    bound = 12 * (names + text) + 21 * dims + 400 * (count + len(manifest.views) + len(manifest.ties)) + 1000
    if bound < limits.MAX_MANIFEST_BYTES:
        return
    size = len(manifest.to_json())
    if size > limits.MAX_MANIFEST_BYTES:
        raise FormatError(f"{location}: its manifest would be {size} characters, more than the cap of "
                          f"{limits.MAX_MANIFEST_BYTES} that reading enforces; store less metadata")


def _prepared(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of ``dtype``: the tensor itself when it already is one (no call that would
    cost microseconds per tensor for nothing)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != dtype or not tensor.is_cpu:
        tensor = tensor.to(device="cpu", dtype=dtype)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


@paused_gc
def save(obj: nn.Module | Mapping[str, torch.Tensor] | Checkpoint, path: str | Path, *,
         format: str | None = None, example_inputs: Any = None, grads: bool = False,
         dtype: str | torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
         checksum: str | None = "default", durable: bool = True, max_shard_size: int | str | None = None,
         **options: Any) -> Manifest:
    """Save every parameter (aliases stored once, ties recorded) to ``path``; return the written manifest.

    ``path`` a folder (``out/``, an existing folder, or ``out/model.safetensors.index.json``): a sharded
    folder in the Hugging Face layout, shards of at most ``max_shard_size`` (bytes, "500MB", "2GiB"; default
    5GB) as huggingface_hub plans them, the index written last (see :mod:`paramio.locations.sharded`).

    ``durable=False`` skips the fsync before the file replaces ``path``: the write is still atomic for the
    processes that read it and across a crash of this one, not across a power loss (see
    :mod:`paramio.atomic`)."""
    location = locate_output(path, format, max_shard_size=max_shard_size)
    unknown = set(options) - (set(by_name(location.format).options) if location.kind != "dcp" else set())
    if unknown and location.kind == "sharded" and Path(path).is_dir():
        raise FormatError(f"{path}: an existing folder, which save writes as a sharded {location.format} folder "
                          f"(options {sorted(unknown)} are not for that); give a file path for one file")
    if unknown:
        raise TypeError(f"save() got options {sorted(unknown)} that format {location.format} does not take")
    ck = as_checkpoint(obj, grads=grads, metadata=metadata)
    for entry, tensor in ck.stored():  # every refusal before the first byte is written
        check_savable(entry.name, tensor)
    manifest = cast_manifest(ck.manifest, parse_dtype(dtype))
    opts = {**options, "example_inputs": example_inputs, "max_shard_size": max_shard_size,
            "model": obj if isinstance(obj, nn.Module) else None}
    return write_stream(location, manifest, ck.stored(), checksum=checksum, options=opts, durable=durable)
