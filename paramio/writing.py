"""Saving: turn a model, mapping or checkpoint into a manifest plus a stream of tensors, and write them
through a format's writer atomically, one tensor at a time, checksumming on the way."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._gc import paused_gc
from .atomic import staged
from .checkpoint import Checkpoint, collect, from_mapping
from .checksum import digest, placeholder, resolve, tensor_bytes
from .dtypes import DTYPES, dtype_name, is_floating
from .errors import FormatError, ParamioError
from .formats.base import Format, Writer
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


@paused_gc
def write_stream(fmt: type[Format], path: str | Path, manifest: Manifest,
                 items: Iterable[tuple[TensorEntry, torch.Tensor]], *, checksum: str | None = "default",
                 options: Mapping[str, Any] | None = None, durable: bool = True) -> Manifest:
    """Write ``items`` (in manifest order) to ``path`` atomically; return the manifest with checksums.

    Tensors are cast to their entry's dtype and moved to the CPU one at a time, so a stream that reads
    lazily (``convert``) holds a single tensor in memory. ``durable``: see :mod:`paramio.atomic`.
    """
    path = Path(path)
    algorithm = resolve(checksum)
    mark = placeholder(algorithm) if algorithm else None
    draft = manifest.model_copy(update={"tensors": tuple(_with_checksum(t, mark) for t in manifest.tensors)})
    sums: list[str | Future[str] | None] = []
    hasher = _Hasher(algorithm)
    try:
        with staged(durable) as staging:
            temp = staging.temp_for(path)
            writer = fmt.writer(temp, path, staging, draft, dict(options or {}))
            try:
                for entry, tensor in items:
                    expected = draft.tensors[len(sums)]
                    if entry.name != expected.name:
                        raise FormatError(f"internal error: tensor `{entry.name}` given where `{expected.name}` was due")
                    data = _prepared(tensor, DTYPES[expected.dtype])
                    if data.shape != expected.shape:
                        raise FormatError(f"tensor `{entry.name}`: shape {tuple(data.shape)}, manifest says {expected.shape}")
                    sums.append(hasher.write(writer, expected, data))
                    del data
                if len(sums) != len(draft.tensors):
                    raise FormatError("internal error: fewer tensors given than the manifest lists")
                if writer.patches_checksums:
                    writer.finish(draft)  # while the hash threads finish
                final = draft.model_copy(update={"tensors": tuple(
                    _with_checksum(t, sum_.result() if isinstance(sum_, Future) else sum_)
                    for t, sum_ in zip(draft.tensors, sums))})
                if writer.patches_checksums:
                    if algorithm is not None:
                        writer.patch(final)
                else:
                    writer.finish(final)
            except BaseException:
                writer.abort()
                raise
    except ParamioError:
        raise
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from e
    finally:
        hasher.close()
    return final


def _with_checksum(entry: TensorEntry, checksum: str | None) -> TensorEntry:
    """``entry`` with another checksum. Checksums come from :func:`digest` or :func:`placeholder`, so they are
    valid by construction: a plain copy, not ``model_copy(update=...)``, which costs three times as much (it
    matters with tens of thousands of tensors)."""
    if entry.checksum == checksum:
        return entry
    new = object.__new__(type(entry))  # what pydantic's own __copy__ does, minus its generic dispatch
    _setattr(new, "__dict__", {**entry.__dict__, "checksum": checksum})
    fields = entry.__pydantic_fields_set__
    if "checksum" not in fields:  # else the set is already right, and shared (entries are frozen)
        fields = _with_checksum_field(frozenset(fields))
    _setattr(new, "__pydantic_fields_set__", fields)
    _setattr(new, "__pydantic_extra__", None)
    _setattr(new, "__pydantic_private__", None)
    return new


_setattr = object.__setattr__


@functools.lru_cache(maxsize=64)
def _with_checksum_field(fields: frozenset[str]) -> set[str]:
    """One shared "fields set" per combination (entries are frozen, and pydantic copies the set before it
    changes one): a set per entry cost 470 bytes, 9 MB for 20,000 tensors."""
    return set(fields | {"checksum"})


def _prepared(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of ``dtype``: the tensor itself when it already is one (no call that would
    cost microseconds per tensor for nothing)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != dtype or not tensor.is_cpu:
        tensor = tensor.to(device="cpu", dtype=dtype)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _cores() -> int:
    """The cores this process may run on (its affinity, which containers set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class _Hasher:
    """Writes a tensor and computes its checksum. For large tensors the hash runs in a second thread while
    the writer copies the same bytes to the file (xxhash and file writes both release the GIL), so the
    checksum costs next to nothing; small ones are hashed in line, where a thread would cost more.

    A writer that keeps every tensor until ``finish`` (``.pt``) writes nothing meanwhile, so there is no
    write to overlap there: :meth:`write` returns a future, the tensors are hashed on all cores while
    ``finish`` writes the file with placeholders, and the caller patches the checksums in after."""

    #: Below this many bytes a tensor is hashed in line.
    THREAD_MIN = 4 << 20
    #: For a writer that patches its checksums in: below this many bytes a tensor is hashed in line.
    DEFERRED_MIN = 256 << 10

    def __init__(self, algorithm: str | None) -> None:
        self._algorithm = algorithm
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:  # after a failure, the hashes still queued are not worth waiting for
            self._pool.shutdown(cancel_futures=True)

    def _submit(self, buffer: object, workers: int) -> Future[str]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="paramio-hash")
        return self._pool.submit(digest, buffer, self._algorithm)

    def write(self, writer: Writer, entry: TensorEntry, data: torch.Tensor) -> str | Future[str] | None:
        if self._algorithm is None:
            writer.write_tensor(entry, data)
            return None
        buffer = tensor_bytes(data)
        if writer.patches_checksums:
            writer.write_tensor(entry, data)
            if buffer.nbytes < self.DEFERRED_MIN:
                return digest(buffer, self._algorithm)
            return self._submit(buffer, _cores())  # the buffer keeps the tensor's memory alive
        if buffer.nbytes < self.THREAD_MIN:
            writer.write_tensor(entry, data)
            return digest(buffer, self._algorithm)
        future = self._submit(buffer, 1)
        try:
            writer.write_tensor(entry, data)
        finally:
            sum_ = future.result()  # never leave the thread reading a tensor that is about to be dropped
        return sum_


@paused_gc
def save(obj: nn.Module | Mapping[str, torch.Tensor] | Checkpoint, path: str | Path, *,
         format: str | None = None, example_inputs: Any = None, grads: bool = False,
         dtype: str | torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
         checksum: str | None = "default", durable: bool = True, **options: Any) -> Manifest:
    """Save every parameter (aliases stored once, ties recorded) to ``path``; return the written manifest.

    ``durable=False`` skips the fsync before the file replaces ``path``: the write is still atomic for the
    processes that read it and across a crash of this one, not across a power loss (see
    :mod:`paramio.atomic`)."""
    fmt = for_path(path, format)
    unknown = set(options) - set(fmt.options)
    if unknown:
        raise TypeError(f"save() got options {sorted(unknown)} that format {fmt.name} does not take")
    ck = as_checkpoint(obj, grads=grads, metadata=metadata)
    manifest = cast_manifest(ck.manifest, parse_dtype(dtype))
    opts = {**options, "example_inputs": example_inputs,
            "model": obj if isinstance(obj, nn.Module) else None}
    return write_stream(fmt, path, manifest, ck.stored(), checksum=checksum, options=opts, durable=durable)
