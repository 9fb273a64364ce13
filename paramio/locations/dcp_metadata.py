"""A DCP folder's ``.metadata``, read without trusting it.

``torch.distributed.checkpoint`` pickles its metadata classes into ``.metadata`` and reads them back with
plain ``pickle.load``, so a checkpoint from elsewhere can run any code (pytorch issue 189308). Here the
pickle goes through an allowlist: each DCP metadata class becomes a plain record (no DCP code runs, and
``torch.distributed.checkpoint`` is not even imported), dtypes and ``torch.Size`` are looked up by name, and
every other global (``builtins.exec``, ``os.system``, a ``__reduce__`` of any kind) is a :class:`FormatError`
before anything is called. Then the records are checked the way a careful reader would: names, dtypes,
shapes, chunks in bounds, not overlapping and covering each tensor, data files inside the folder and
chunk byte ranges inside them. What comes out is a :class:`Layout` of plain values.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import dataclass, field
from math import prod
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..dtypes import DTYPES, dtype_name
from ..errors import FormatError, MissingFileError

__all__ = [
    "MAX_METADATA_BYTES",
    "METADATA_NAME",
    "PLANNER_CHUNKS_KEY",
    "PLANNER_MANIFEST_KEY",
    "Chunk",
    "DCPTensor",
    "Layout",
    "parse_layout",
    "read_layout",
]

METADATA_NAME = ".metadata"
#: Keys paramio adds to the metadata's ``planner_data`` dict (DCP's own entries there are state-dict keys).
PLANNER_MANIFEST_KEY = "paramio.manifest"
PLANNER_CHUNKS_KEY = "paramio.chunks"
#: A ``.metadata`` larger than this is refused before it is unpickled (models with 100k chunks use ~50 MB).
MAX_METADATA_BYTES = 1 << 30

_DCP = "torch.distributed.checkpoint."


class _Record:
    """A DCP metadata object as plain data: the class name and the state its pickle carried."""

    kind = "?"

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def field(self, name: str, position: int | None = None) -> Any:
        """A field from the pickled state: a dict (dataclasses), or a tuple (``TensorProperties``)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots)
        if isinstance(state, dict):
            return state.get(name)
        if isinstance(state, tuple) and position is not None and position < len(state):
            return state[position]
        return None


def _record_class(kind: str) -> type[_Record]:
    return type(kind, (_Record,), {"kind": kind})


_RECORDS = {name: _record_class(name) for name in (
    "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
    "MetadataIndex", "StorageMeta", "_StorageInfo", "_StoragePrefix")}


def _mem_format(value: object) -> int:
    return value if isinstance(value, int) else -1


def _layout(name: object) -> torch.layout:
    found = {"torch.strided": torch.strided, "torch.sparse_coo": torch.sparse_coo}.get(name)  # type: ignore[call-overload]
    if found is None:
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return found


def _size(*args: object) -> tuple:
    return tuple(args[0]) if args and isinstance(args[0], tuple | list) else ()


def _path(*parts: object) -> str:
    return str(PurePosixPath(*(str(p) for p in parts)))


_ALLOWED: dict[tuple[str, str], object] = {
    **{(_DCP + "metadata", n): _RECORDS[n] for n in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta")},
    (_DCP + "filesystem", "_StorageInfo"): _RECORDS["_StorageInfo"],
    (_DCP + "filesystem", "_StoragePrefix"): _RECORDS["_StoragePrefix"],
    (_DCP + "metadata", "_MEM_FORMAT_ENCODING"): _mem_format,
    ("torch.serialization", "_get_layout"): _layout,
    ("torch", "Size"): _size,
    ("torch", "strided"): torch.strided,
    ("pathlib", "PosixPath"): _path,
    ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path,
    ("pathlib", "PureWindowsPath"): _path,
    ("collections", "OrderedDict"): dict,
}


class _Unpickler(pickle.Unpickler):
    """Admits only DCP's metadata classes (as plain records), dtypes, ``torch.Size`` and paths."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refuses `{module}.{name}`: not a DCP metadata class; loading it could "
                                     "run code")

    def persistent_load(self, pid: object) -> Any:
        raise pickle.UnpicklingError("refuses a persistent id: not DCP metadata")


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the tensor, and the byte range of its ``torch.save``
    record in a data file of the folder."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class DCPTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class Layout:
    """What ``.metadata`` says, checked: tensors in its order, non-tensor entries (skipped), paramio's
    manifest and chunk checksums when paramio wrote the folder."""

    tensors: tuple[DCPTensor, ...]
    skipped: tuple[str, ...] = ()
    manifest_json: str | None = None
    chunk_sums: dict[str, dict[str, str]] = field(default_factory=dict)
    version: str | None = None

    #: Every data file the metadata names (tensor chunks and non-tensor entries alike).
    files: tuple[str, ...] = ()


def read_layout(folder: Path) -> Layout:
    """The checked layout of the DCP folder ``folder``; any defect is a FormatError naming the file."""
    path = folder / METADATA_NAME
    if not path.exists():
        raise MissingFileError(path)
    try:
        size = os.stat(path).st_size
        if size > MAX_METADATA_BYTES:
            raise FormatError(f"{path}: {size} bytes, more than the cap of {MAX_METADATA_BYTES} for DCP metadata")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    return parse_layout(data, folder)


def parse_layout(data: bytes, folder: Path) -> Layout:
    path = folder / METADATA_NAME
    try:
        top = _Unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise FormatError(f"{path}: unsafe or corrupt DCP metadata: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError,
            RecursionError, ImportError) as e:
        raise FormatError(f"{path}: not a DCP metadata pickle (truncated or corrupt): {type(e).__name__}: {e}") from e
    try:
        return _Checker(path, folder).layout(top)
    except FormatError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
        raise FormatError(f"{path}: malformed DCP metadata: {type(e).__name__}: {e}") from e


def _of(value: object, kind: str) -> bool:
    return isinstance(value, _Record) and value.kind == kind


class _Checker:
    """Turns the unpickled records into a :class:`Layout`, refusing anything inconsistent."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self._file_sizes: dict[str, int] = {}

    def fail(self, message: str) -> FormatError:
        return FormatError(f"{self.path}: {message}")

    def ints(self, value: object, what: str) -> tuple[int, ...]:
        if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
            raise self.fail(f"{what}: expected a tuple of non-negative integers, found {value!r:.80}")
        return tuple(value)

    def layout(self, top: object) -> Layout:
        if not _of(top, "Metadata"):
            raise self.fail(f"not DCP metadata (a {type(top).__name__} at the top)")
        entries = top.field("state_dict_metadata")
        if not isinstance(entries, dict):
            raise self.fail("state_dict_metadata is not a mapping")
        storage = self._storage(top.field("storage_data"))
        planner = top.field("planner_data")
        planner = planner if isinstance(planner, dict) else {}
        tensors, skipped = [], []
        for name, md in entries.items():
            if not isinstance(name, str) or not name:
                raise self.fail(f"entry name {name!r:.80} is not a non-empty string")
            if _of(md, "BytesStorageMetadata"):
                skipped.append(name)
            elif _of(md, "TensorStorageMetadata"):
                tensors.append(self._tensor(name, md, storage))
            else:
                raise self.fail(f"entry `{name}`: {type(md).__name__} is neither tensor nor bytes metadata")
        manifest = planner.get(PLANNER_MANIFEST_KEY)
        sums = planner.get(PLANNER_CHUNKS_KEY)
        version = top.field("version")
        return Layout(tuple(tensors), tuple(skipped), manifest if isinstance(manifest, str) else None,
                      self._chunk_sums(sums), version if isinstance(version, str) else None,
                      tuple(sorted(self._file_sizes)))

    def _chunk_sums(self, text: object) -> dict[str, dict[str, str]]:
        if text is None:
            return {}
        try:
            sums = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            sums = None
        if not isinstance(sums, dict) or not all(isinstance(v, dict) for v in sums.values()):
            raise self.fail(f"`{PLANNER_CHUNKS_KEY}` in the planner data is not paramio's chunk checksum table")
        return sums

    def _storage(self, storage: object) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]]:
        if not isinstance(storage, dict):
            raise self.fail("storage_data is not a mapping (not written by DCP's file system writer)")
        out = {}
        for index, info in storage.items():
            if not _of(index, "MetadataIndex") or not _of(info, "_StorageInfo"):
                raise self.fail("storage_data holds entries that are not DCP file storage records")
            fqn, offset = index.field("fqn"), index.field("offset")
            where = (fqn, None if offset is None else self.ints(offset, f"storage index of `{fqn}`"))
            out[where] = self._place(str(fqn), info)
        return out

    def _place(self, fqn: str, info: _Record) -> tuple[str, int, int]:
        rel, offset, length = info.field("relative_path"), info.field("offset"), info.field("length")
        if info.field("transform_descriptors"):
            raise self.fail(f"`{fqn}` is stored through stream transforms {info.field('transform_descriptors')!r} "
                            "(e.g. compression), which paramio does not read")
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise self.fail(f"`{fqn}`: byte range {offset!r}+{length!r} is not two non-negative integers")
        return self._data_file(fqn, rel), offset, length

    def _data_file(self, fqn: str, rel: object) -> str:
        if not isinstance(rel, str) or not rel:
            raise self.fail(f"`{fqn}`: data file name {rel!r:.80} is not a file name")
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if rel.startswith(("/", "\\")) or os.path.isabs(rel) or ".." in parts or ":" in rel or "\0" in rel:
            raise self.fail(f"`{fqn}`: data file `{rel}` leaves the checkpoint folder; refused")
        if rel not in self._file_sizes:
            target = self.folder / rel
            if not target.is_file():
                raise self.fail(f"data file `{rel}` (holding `{fqn}`) is missing")
            self._file_sizes[rel] = target.stat().st_size
        return rel

    def _tensor(self, name: str, md: _Record, storage: dict) -> DCPTensor:
        props = md.field("properties")
        dtype = props.field("dtype", 0) if _of(props, "TensorProperties") else None
        if not isinstance(dtype, torch.dtype):
            raise self.fail(f"tensor `{name}`: no dtype in its properties")
        if dtype not in DTYPES.values():
            raise self.fail(f"tensor `{name}`: dtype {dtype} has no exact paramio dtype; refused")
        shape = self.ints(md.field("size"), f"tensor `{name}` size")
        chunks_md = md.field("chunks")
        if not isinstance(chunks_md, list | tuple):
            raise self.fail(f"tensor `{name}`: chunks is not a list")
        itemsize = torch.empty((), dtype=dtype).element_size()
        chunks = [self._chunk(name, c, shape, itemsize, storage) for c in chunks_md]
        self._check_cover(name, shape, chunks)
        return DCPTensor(name, dtype_name(dtype), shape, tuple(chunks))

    def _chunk(self, name: str, md: object, shape: tuple[int, ...], itemsize: int, storage: dict) -> Chunk:
        if not _of(md, "ChunkStorageMetadata"):
            raise self.fail(f"tensor `{name}`: a chunk that is not chunk metadata")
        offsets = self.ints(md.field("offsets"), f"tensor `{name}` chunk offsets")
        sizes = self.ints(md.field("sizes"), f"tensor `{name}` chunk sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise self.fail(f"tensor `{name}`: chunk at {list(offsets)} has another rank than the tensor {list(shape)}")
        if any(o + s > n for o, s, n in zip(offsets, sizes, shape)):
            raise self.fail(f"tensor `{name}`: chunk at {list(offsets)} of size {list(sizes)} lies outside its "
                            f"shape {list(shape)}")
        place = storage.get((name, offsets))
        if place is None:
            raise self.fail(f"tensor `{name}`: chunk at {list(offsets)} has no storage record")
        rel, offset, length = place
        if offset + length > self._file_sizes[rel]:
            raise self.fail(f"tensor `{name}`: chunk at {list(offsets)} claims bytes {offset}..{offset + length} of "
                            f"`{rel}`, which holds {self._file_sizes[rel]} bytes (truncated or lying metadata)")
        if prod(sizes) * itemsize > length:
            raise self.fail(f"tensor `{name}`: chunk at {list(offsets)} of size {list(sizes)} needs "
                            f"{prod(sizes) * itemsize} bytes, its record in `{rel}` has {length}")
        return Chunk(offsets, sizes, rel, offset, length)

    def _check_cover(self, name: str, shape: tuple[int, ...], chunks: list[Chunk]) -> None:
        """Chunks must tile the tensor: none overlapping, their volumes adding up to the whole."""
        boxes = sorted((c for c in chunks if prod(c.sizes)), key=lambda c: c.offsets)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                if shape and b.offsets[0] >= a.offsets[0] + a.sizes[0]:
                    break  # sorted by the first offset: no later box can overlap ``a``
                if all(bo < ao + asz and ao < bo + bsz
                       for ao, asz, bo, bsz in zip(a.offsets, a.sizes, b.offsets, b.sizes)):
                    raise self.fail(f"tensor `{name}`: chunks at {list(a.offsets)} and {list(b.offsets)} overlap")
        covered = sum(prod(c.sizes) for c in boxes)
        if covered != prod(shape):
            raise self.fail(f"tensor `{name}`: its chunks cover {covered} of its {prod(shape)} elements "
                            "(chunks missing)")
