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
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..atomic import Staging
from ..checksum import tensor_bytes
from ..dtypes import DTYPES
from ..errors import FormatError, InternalError
from ..manifest import Manifest, TensorEntry
from ._mapped import ITEMSIZE, MappedFile
from .base import MANIFEST_KEY, FileContents, Format, Reader, StoredTensor, Writer

__all__ = ["SafetensorsFormat", "MANIFEST_KEY", "HEADER_CAP"]

#: The stock library's own cap on the header size.
HEADER_CAP = 100_000_000
_METADATA = "__metadata__"
_BUFFER = 1 << 20

# safetensors dtype code <-> manifest dtype name
_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_DTYPE_CODES = {name: code for code, name in _CODES.items()}


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _tensor_json(manifest: Manifest, offsets: list[tuple[int, int]]) -> tuple[str, str]:
    """The header's tensor entries as two JSON objects: the names that sort before ``__metadata__`` and
    those after it. Only the metadata changes between the draft and the final header, so the (large)
    tensor part is serialized once and the header is spliced together around the metadata."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for entry, (begin, end) in zip(manifest.tensors, offsets, strict=True):
        code = _DTYPE_CODES.get(entry.dtype)
        if code is None:
            raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no safetensors code")
        if entry.name == _METADATA:
            raise FormatError(f"tensor `{_METADATA}`: safetensors reserves this name for the header's metadata")
        side = before if entry.name < _METADATA else after
        side[entry.name] = {"dtype": code, "shape": list(entry.shape), "data_offsets": [begin, end]}
    return _dumps(before), _dumps(after)


def _metadata_json(manifest: Manifest) -> str:
    meta: dict[str, str] = {"format": "pt", MANIFEST_KEY: manifest.to_json()}
    stored = {t.name for t in manifest.tensors}
    for alias, canonical in manifest.alias_map().items():
        if alias not in meta and canonical in stored:
            meta[alias] = canonical
    return _dumps(meta)


def _header_bytes(tensors: tuple[str, str], metadata: str) -> bytes:
    """u64 length + the JSON header (keys sorted, as ``json.dumps(sort_keys=True)`` of the whole header
    would give), padded with spaces to 8 bytes."""
    before, after = tensors
    text = "".join((before[:-1], "," if len(before) > 2 else "", f'"{_METADATA}":', metadata,
                    "," if len(after) > 2 else "", after[1:])).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _offsets(manifest: Manifest) -> list[tuple[int, int]]:
    out, pos = [], 0
    for entry in manifest.tensors:
        if entry.dtype not in _DTYPE_CODES:
            raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no safetensors code")
        size = entry.numel * ITEMSIZE[entry.dtype]
        out.append((pos, pos + size))
        pos += size
    return out


class SafetensorsWriter(Writer):
    """Writes the header with placeholder checksums, streams the data, then rewrites the header in place
    (checksums have a fixed length, so the header keeps its size)."""

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        super().__init__(temp, final, staging, draft, options)
        self._offsets = _offsets(draft)
        self._tensors = _tensor_json(draft, self._offsets)
        self._header = _header_bytes(self._tensors, _metadata_json(draft))
        if len(self._header) - 8 > HEADER_CAP:  # readers (safetensors' own too) refuse a larger header
            raise FormatError(f"{final}: the safetensors header would be {len(self._header) - 8} bytes, over the "
                              f"cap of {HEADER_CAP} that readers enforce; store less metadata, or fewer tensors "
                              "per file (a sharded folder)")
        self._file: BinaryIO = open(temp, "wb", buffering=_BUFFER)  # small tensors: fewer syscalls
        self._file.write(self._header)
        self._index = 0

    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        begin, end = self._offsets[self._index]
        self._index += 1
        data = tensor_bytes(tensor)
        if data.nbytes != end - begin:
            raise FormatError(f"tensor `{entry.name}`: {data.nbytes} bytes given, {end - begin} expected")
        self._file.write(data)

    def finish(self, manifest: Manifest) -> None:
        header = _header_bytes(self._tensors, _metadata_json(manifest))
        if len(header) != len(self._header):
            raise InternalError("the safetensors header changed size between draft and final")
        self._file.seek(0)
        self._file.write(header)
        self.staging.sync(self._file)
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class SafetensorsReader(Reader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                self._size = size
                self._parse(fh)
                # Every later read maps the file opened here, never the name again: a writer may have replaced
                # it meanwhile (old header, new data).
                self._file = MappedFile(os.dup(fh.fileno()), size)
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
        self._found = {e[2].name: (e[0], e[1], e[2]) for e in entries}

    def _entry(self, name: str, info: object) -> tuple[int, int, StoredTensor]:
        # Plain loops and exact type checks: this runs once per tensor, 20,000 times for some files.
        if type(info) is not dict:
            raise self._fail(f"tensor `{name}`: entry is not an object")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        dtype = _CODES.get(code) if type(code) is str else None
        if dtype is None:
            raise self._fail(f"tensor `{name}`: unknown dtype {code!r}")
        numel = 1
        if type(shape) is list and len(shape) <= 64:
            for d in shape:
                if type(d) is not int or d < 0:
                    break
                numel *= d
            else:
                shape = tuple(shape)
        if type(shape) is not tuple:
            raise self._fail(f"tensor `{name}`: shape must be a list of at most 64 non-negative integers")
        if type(offsets) is not list or len(offsets) != 2:
            raise self._fail(f"tensor `{name}`: data_offsets must be two ordered non-negative integers")
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
            raise self._fail(f"tensor `{name}`: data_offsets must be two ordered non-negative integers")
        expected = numel * ITEMSIZE[dtype]
        if end - begin != expected:
            raise self._fail(
                f"tensor `{name}`: shape {shape} of {dtype} needs {expected} bytes, data_offsets give {end - begin}"
            )
        if end > self._size - self._data_start:
            raise self._fail(f"tensor `{name}`: data_offsets end at {end}, past the end of the data")
        return begin, end, StoredTensor(name, dtype, shape)

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
        found = self._found.get(name)
        if found is None:
            raise FormatError(f"{self.path}: no tensor `{name}`")
        begin, end, stored = found
        return self._file.tensor(self._data_start + begin, end - begin, DTYPES[stored.dtype]).view(stored.shape)

    def close(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()


class SafetensorsFormat(Format):
    name = "safetensors"
    suffixes = (".safetensors",)

    reader_class = SafetensorsReader
    writer_class = SafetensorsWriter
