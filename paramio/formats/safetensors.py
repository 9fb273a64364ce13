"""safetensors: canonical tensors only, ties as ``{alias: canonical}`` pairs in ``__metadata__`` (the
convention of ``safetensors.torch.save_model``), the manifest in ``__metadata__["paramio.manifest"]``.

Written by hand rather than with ``safetensors.save_file`` because save_file needs every tensor in memory
at once (no streaming), refuses shared tensors, and orders metadata by hash (not byte-deterministic). The
layout is small: u64 header length, JSON header padded with spaces to 8 bytes, then the data. Reading is
hand-checked too, so that every bound is verified with a paramio message before anything is allocated;
data is then mapped copy-on-write, like ``safe_open``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..atomic import Staging
from ..dtypes import torch_dtype
from ..errors import FormatError
from ..manifest import Manifest, TensorEntry
from .base import FileContents, Format, Reader, StoredTensor, Writer

__all__ = ["SafetensorsFormat", "MANIFEST_KEY", "HEADER_CAP"]

MANIFEST_KEY = "paramio.manifest"
#: The stock library's own cap on the header size.
HEADER_CAP = 100_000_000

# safetensors dtype code <-> manifest dtype name
_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_DTYPE_CODES = {name: code for code, name in _CODES.items()}
_ITEMSIZE = {name: torch.empty(0, dtype=torch_dtype(name)).element_size() for name in _CODES.values()}


def _header_bytes(manifest: Manifest, offsets: list[tuple[int, int]]) -> bytes:
    meta: dict[str, str] = {"format": "pt", MANIFEST_KEY: manifest.to_json()}
    for alias, canonical in manifest.alias_map().items():
        if alias not in meta and canonical in {t.name for t in manifest.tensors}:
            meta[alias] = canonical
    header: dict[str, Any] = {"__metadata__": meta}
    for entry, (begin, end) in zip(manifest.tensors, offsets):
        if entry.dtype not in _DTYPE_CODES:
            raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no safetensors code")
        header[entry.name] = {"dtype": _DTYPE_CODES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [begin, end]}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _offsets(manifest: Manifest) -> list[tuple[int, int]]:
    out, pos = [], 0
    for entry in manifest.tensors:
        if entry.dtype not in _DTYPE_CODES:
            raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no safetensors code")
        size = entry.numel * _ITEMSIZE[entry.dtype]
        out.append((pos, pos + size))
        pos += size
    return out


class SafetensorsWriter(Writer):
    """Writes the header with placeholder checksums, streams the data, then rewrites the header in place
    (checksums have a fixed length, so the header keeps its size)."""

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        super().__init__(temp, final, staging, draft, options)
        self._offsets = _offsets(draft)
        self._header = _header_bytes(draft, self._offsets)
        self._file: BinaryIO = open(temp, "wb")
        self._file.write(self._header)
        self._index = 0

    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        begin, end = self._offsets[self._index]
        self._index += 1
        data = _as_bytes(tensor)
        if data.nbytes != end - begin:
            raise FormatError(f"tensor `{entry.name}`: {data.nbytes} bytes given, {end - begin} expected")
        self._file.write(data)

    def finish(self, manifest: Manifest) -> None:
        header = _header_bytes(manifest, self._offsets)
        if len(header) != len(self._header):
            raise FormatError("internal error: the safetensors header changed size between draft and final")
        self._file.seek(0)
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class SafetensorsReader(Reader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._storage: torch.UntypedStorage | None = None
        try:
            with open(self.path, "rb") as fh:
                self._size = os.fstat(fh.fileno()).st_size
                self._parse(fh)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from e

    def _fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: not a valid safetensors file: {problem}")

    def _parse(self, fh: BinaryIO) -> None:
        if self._size < 8:
            raise self._fail(f"{self._size} bytes, shorter than the 8-byte header length (truncated?)")
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > HEADER_CAP:
            raise self._fail(f"header length {length} exceeds the cap of {HEADER_CAP} bytes")
        if length > self._size - 8:
            raise self._fail(f"header length {length} runs past the end of the file ({self._size} bytes; truncated?)")
        raw = fh.read(length)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._fail(f"header is not UTF-8 JSON ({type(e).__name__})") from e
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        self._data_start = 8 + length
        data_size = self._size - self._data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise self._fail("__metadata__ must map strings to strings")
        self._meta: dict[str, str] = meta
        entries: list[tuple[int, int, StoredTensor]] = []
        for name, info in header.items():
            entries.append(self._entry(name, info))
        entries.sort(key=lambda e: (e[0], e[1]))
        pos = 0
        for begin, end, stored in entries:
            if begin != pos:
                raise self._fail(
                    f"tensor `{stored.name}` starts at byte {begin}, expected {pos} (overlapping or holes in data)"
                )
            pos = end
        if pos != data_size:
            raise self._fail(f"tensors cover {pos} data bytes but the file holds {data_size} (truncated or padded)")
        self._stored = tuple(e[2] for e in entries)
        self._ranges = {e[2].name: (e[0], e[1]) for e in entries}

    def _entry(self, name: str, info: object) -> tuple[int, int, StoredTensor]:
        if not isinstance(info, dict):
            raise self._fail(f"tensor `{name}`: entry is not an object")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if code not in _CODES:
            raise self._fail(f"tensor `{name}`: unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 64:
            raise self._fail(f"tensor `{name}`: shape must be a list of at most 64 non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise self._fail(f"tensor `{name}`: data_offsets must be two ordered non-negative integers")
        dtype = _CODES[code]
        expected = prod(shape) * _ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != expected:
            raise self._fail(
                f"tensor `{name}`: shape {tuple(shape)} of {dtype} needs {expected} bytes, data_offsets give "
                f"{offsets[1] - offsets[0]}"
            )
        if offsets[1] > self._size - self._data_start:
            raise self._fail(f"tensor `{name}`: data_offsets end at {offsets[1]}, past the end of the data")
        return offsets[0], offsets[1], StoredTensor(name, dtype, tuple(shape))

    def contents(self) -> FileContents:
        names = {s.name for s in self._stored}
        links = {k: v for k, v in self._meta.items() if k not in names and k != "format" and v in names}
        metadata = {k: v for k, v in self._meta.items() if k not in links and k not in (MANIFEST_KEY, "format")}
        return FileContents(
            producer="safetensors",
            stored=self._stored,
            links=links,
            manifest_json=self._meta.get(MANIFEST_KEY),
            metadata=metadata,
        )

    def read(self, name: str) -> torch.Tensor:
        stored = next((s for s in self._stored if s.name == name), None)
        if stored is None:
            raise FormatError(f"{self.path}: no tensor `{name}`")
        dtype = torch_dtype(stored.dtype)
        begin, end = self._ranges[name]
        if end == begin:
            return torch.empty(stored.shape, dtype=dtype)
        if self._storage is None:
            # Copy-on-write mapping of the whole file: pages are read when touched, edits stay private.
            self._storage = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=self._size)
        start = self._data_start + begin
        raw = torch.empty(0, dtype=torch.uint8).set_(self._storage, start, (end - begin,))
        if start % _ITEMSIZE[stored.dtype]:
            raw = raw.clone()  # unaligned for this dtype: an aligned copy
        return raw.view(dtype).reshape(stored.shape)


class SafetensorsFormat(Format):
    name = "safetensors"
    suffixes = (".safetensors",)

    @classmethod
    def reader(cls, path: Path) -> SafetensorsReader:
        return SafetensorsReader(path)

    @classmethod
    def writer(cls, temp: Path, final: Path, staging: Staging, draft: Manifest,
               options: Mapping[str, Any]) -> SafetensorsWriter:
        return SafetensorsWriter(temp, final, staging, draft, options)
