"""Reading ONNX: the file's fields walked once (no tensor data read), each initializer's bytes located and
mapped on demand from the files opened here (the model and its external data files)."""

from __future__ import annotations

import json
import mmap
import os
import stat
from dataclasses import dataclass
from math import prod
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ...dtypes import torch_dtype
from ...errors import FormatError
from .._mapped import ITEMSIZE, MappedFile
from ..base import MANIFEST_KEY, SKIPPED_KEY, FileContents, Reader, StoredTensor
from .codes import CONSTANTS_KEY, MAX_RANK, NAMES
from .protowire import LEN, fields
from .torch_notes import CONSTANT_NAME, GRAPH_METADATA, VALUE_INFO, torch_roles

__all__ = ["ONNXReader"]

#: Opens of a model whose data files a concurrent save removed before they were opened (each then finds the
#: path naming a newer version).
_ATTEMPTS = 5


@dataclass(frozen=True)
class _Initializer:
    """One initializer as found: where its data is (``raw`` byte range in the model file, an ``external``
    (file, offset) pair, or the ``typed`` fields of its parsed header)."""

    name: str
    dtype: str | None  # None: a type paramio has no dtype for
    shape: tuple[int, ...]
    raw: tuple[int, int] | None = None
    external: tuple[Path, int, int] | None = None
    typed: TensorProto | None = None


def _typed_array(proto: TensorProto, dtype: str) -> np.ndarray:
    """The values of a tensor stored in the typed fields (float_data, int32_data, ...), as numpy bits of
    ``dtype``. Narrow types travel in int32_data as their bit patterns (onnx.proto)."""
    if dtype == "float32":
        return np.asarray(proto.float_data, dtype=np.float32)
    if dtype == "complex64":
        return np.asarray(proto.float_data, dtype=np.float32).view(np.complex64)
    if dtype == "float64":
        return np.asarray(proto.double_data, dtype=np.float64)
    if dtype == "complex128":
        return np.asarray(proto.double_data, dtype=np.float64).view(np.complex128)
    if dtype == "int64":
        return np.asarray(proto.int64_data, dtype=np.int64)
    if dtype in ("uint32", "uint64"):
        return np.asarray(proto.uint64_data, dtype=np.uint64).astype(np.dtype(dtype))
    bits = {"int32": np.int32, "int16": np.int16, "int8": np.int8, "uint16": np.uint16, "uint8": np.uint8,
            "bool": np.uint8, "float16": np.uint16, "bfloat16": np.uint16, "float8_e4m3fn": np.uint8,
            "float8_e5m2": np.uint8}[dtype]
    return np.asarray(proto.int32_data, dtype=np.int64).astype(bits)


def _typed_count(proto: TensorProto, dtype: str) -> int:
    """How many elements the typed field for ``dtype`` holds."""
    if dtype in ("float32", "complex64"):
        return len(proto.float_data) // (2 if dtype == "complex64" else 1)
    if dtype in ("float64", "complex128"):
        return len(proto.double_data) // (2 if dtype == "complex128" else 1)
    if dtype == "int64":
        return len(proto.int64_data)
    if dtype in ("uint32", "uint64"):
        return len(proto.uint64_data)
    return len(proto.int32_data)


class ONNXReader(Reader):
    """Walks the file's fields once (no tensor data read), then maps each tensor's bytes on demand from the
    files opened here (the model and its external data files)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._folder = self.path.parent.resolve()
        self._sources: dict[Path, MappedFile] = {}
        for attempt in range(_ATTEMPTS):
            try:
                self._open()
                return
            except FormatError:
                self.close()
                # A save committed meanwhile and removed the data files of the version opened here: the
                # path names a new version, read that one (each attempt reads one whole version).
                if attempt + 1 == _ATTEMPTS or not self._replaced():
                    raise
            except BaseException:
                self.close()
                raise

    def _replaced(self) -> bool:
        """Whether the path now names another file than the one this reader opened."""
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) != self._identity

    def _open(self) -> None:
        self._sources = {}
        self._targets: dict[str, Path] = {}
        self._inits: dict[str, _Initializer] = {}
        self._graph_seen = False
        self._graph_notes = bytearray()  # value_info and metadata_props of the graph: the exporter's notes
        self._identity = (-1, -1)
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                self._identity = (info.st_dev, info.st_ino)
                self._size = info.st_size
                if self._size == 0:
                    raise self._fail("empty file (0 bytes)")
                self._sources[self.path] = MappedFile(os.dup(fh.fileno()), self._size, copy=True, name=str(self.path))
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    rest = self._scan(buf)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from e
        try:
            self._model = onnx.ModelProto.FromString(rest)
        except (DecodeError, RecursionError) as e:
            raise self._fail(f"model fields do not parse ({e})") from e
        if not self._graph_seen or self._model.ir_version <= 0:
            raise self._fail("no graph or no ir_version (is this an ONNX model?)")
        self._props = {p.key: p.value for p in self._model.metadata_props}
        self._contents, self._by_name = self._describe()

    def _fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: not a valid ONNX model: {problem}")

    def _raise(self, problem: str) -> Any:
        raise self._fail(problem)

    # -- the walk ---------------------------------------------------------------------------------------
    def _scan(self, buf: mmap.mmap) -> bytes:
        """Initializers of every graph record; the model's other fields are returned for protobuf."""
        rest = bytearray()
        for f in fields(buf, 0, self._size, self._raise):
            if f.number == 7 and f.wire == LEN:
                self._graph_seen = True
                for g in fields(buf, f.start, f.end, self._raise):
                    if g.number == 5 and g.wire == LEN:
                        self._add(self._initializer(buf, g.start, g.end))
                    elif g.number in (VALUE_INFO, GRAPH_METADATA):
                        self._graph_notes += buf[g.key_start:g.end]
            else:
                rest += buf[f.key_start:f.end]
        return bytes(rest)

    def _add(self, init: _Initializer) -> None:
        if init.name in self._inits:
            raise self._fail(f"two initializers are named `{init.name}`")
        self._inits[init.name] = init

    def _initializer(self, buf: mmap.mmap, start: int, end: int) -> _Initializer:
        raw: tuple[int, int] | None = None
        header = bytearray()
        for f in fields(buf, start, end, self._raise):
            if f.number == 9 and f.wire == LEN:
                raw = (f.start, f.end)  # the bytes stay in the file; only their place is kept
            else:
                header += buf[f.key_start:f.end]
        try:
            proto = TensorProto.FromString(bytes(header))
        except (DecodeError, RecursionError) as e:
            raise self._fail(f"an initializer at byte {start} does not parse ({e})") from e
        name = proto.name
        if not name:
            raise self._fail(f"the initializer at byte {start} has no name")
        if len(proto.dims) > MAX_RANK or any(d < 0 for d in proto.dims):
            raise self._fail(f"initializer `{name}`: dims {list(proto.dims)[:8]} must be at most {MAX_RANK} "
                             "non-negative sizes")
        shape = tuple(int(d) for d in proto.dims)
        dtype = NAMES.get(proto.data_type)
        if dtype is None:
            return _Initializer(name, None, shape)
        numel = prod(shape)
        nbytes = numel * ITEMSIZE[dtype]
        if proto.data_location == TensorProto.EXTERNAL:
            return _Initializer(name, dtype, shape, external=self._external(name, proto, nbytes))
        if raw is not None:
            if raw[1] - raw[0] != nbytes:
                raise self._fail(f"initializer `{name}`: shape {list(shape)} of {dtype} needs {nbytes} bytes, "
                                 f"raw_data holds {raw[1] - raw[0]}")
            return _Initializer(name, dtype, shape, raw=raw)
        count = _typed_count(proto, dtype)
        if count != numel:
            raise self._fail(f"initializer `{name}`: shape {list(shape)} needs {numel} values, the file holds {count}")
        return _Initializer(name, dtype, shape, typed=proto)

    def _external(self, name: str, proto: TensorProto, nbytes: int) -> tuple[Path, int, int]:
        """The data file, offset and length of an external tensor, each checked before anything is read:
        the location stays inside the model's folder, and the byte range inside the data file."""
        info = {e.key: e.value for e in proto.external_data}
        where = f"initializer `{name}`: external data"
        location = info.get("location", "")
        target = self._targets.get(location)
        if target is None:  # checked once per location: a model's tensors usually share one data file
            target = self._targets[location] = self._target(location, where)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info.get("length", str(nbytes)))
        except ValueError as e:
            raise FormatError(f"{self.path}: {where} offset/length are not integers") from e
        size = self._data_source(target, where, location).size
        if offset < 0 or length != nbytes or offset + length > size:
            raise FormatError(f"{self.path}: {where} range [{offset}, {offset + length}) of {location!r} "
                              f"({size} bytes) does not hold the {nbytes} bytes the tensor needs (truncated?)")
        return target, offset, length

    def _target(self, location: str, where: str) -> Path:
        """The data file a location names, refused unless it is a file inside the model's folder."""
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not location or "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")) \
                or ".." in parts or (len(location) > 1 and location[1] == ":"):
            raise FormatError(f"{self.path}: {where} location {location!r} is not a relative path inside the "
                              "model's folder (refused: absolute paths and `..` could read any file)")
        target = (self._folder / location).resolve()
        if not target.is_relative_to(self._folder):
            raise FormatError(f"{self.path}: {where} location {location!r} leads out of the model's folder "
                              f"(to {target}); refused")
        if not target.is_file():
            raise FormatError(f"{self.path}: {where} file {location!r} is missing (it must lie beside the model)")
        return target

    def _data_source(self, target: Path, where: str, location: str) -> MappedFile:
        """The data file ``target`` (inside the folder, checked), opened once; its size is that of the file
        opened, which is the one read later."""
        source = self._sources.get(target)
        if source is None:
            # no symlink swapped in since the check; no blocking on a FIFO swapped in either
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            try:
                fd = os.open(target, flags)
            except OSError as e:
                raise FormatError(f"{self.path}: {where} file {location!r} cannot be opened: "
                                  f"{e.strerror or e}") from e
            info = os.fstat(fd)
            source = self._sources[target] = MappedFile(fd, info.st_size, copy=True, name=str(target))
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"{self.path}: {where} {location!r} is not a regular file")
        return source

    # -- the protocol -----------------------------------------------------------------------------------
    def _describe(self) -> tuple[FileContents, dict[str, _Initializer]]:
        """What the file stores, under which names and kinds (see ``contents``)."""
        manifest_json = self._props.get(MANIFEST_KEY)
        hidden: set[str] = set()
        roles: dict[str, tuple[str, str]] | None = None
        if manifest_json is not None:
            if CONSTANTS_KEY in self._props:
                try:
                    hidden = set(json.loads(self._props[CONSTANTS_KEY]))
                except (ValueError, TypeError) as e:
                    raise self._fail(f"metadata {CONSTANTS_KEY} is not a JSON list of names") from e
        else:
            try:
                roles = torch_roles(onnx.GraphProto.FromString(bytes(self._graph_notes)), set(self._inits))
            except (DecodeError, RecursionError) as e:
                raise self._fail(f"graph value_info/metadata do not parse ({e})") from e
        stored, links, skipped = [], {}, []
        by_name: dict[str, _Initializer] = {}
        shared: dict[tuple, str] = {}
        for init in self._inits.values():
            if init.name in hidden:
                continue
            if init.dtype is None:
                skipped.append(init.name)
                continue
            name, kind = init.name, None
            if roles is not None:  # the dynamo exporter said which initializers are the model's, and their names
                kind, target = roles.get(init.name, ("constant", init.name))
                if target not in self._inits and target not in by_name:
                    name = target
            elif manifest_json is None and CONSTANT_NAME.search(init.name):
                kind = "constant"
            if init.external is not None and init.external[2]:
                # ONNX's only way to say "same tensor": two initializers on one external byte range
                key = (*init.external, init.dtype, init.shape)
                if key in shared:
                    links[name] = shared[key]
                    continue
                shared[key] = name
            by_name[name] = init
            stored.append(StoredTensor(name, init.dtype, init.shape, kind))
        metadata = {k: v for k, v in self._props.items() if not k.startswith("paramio.")}
        if skipped:
            metadata[SKIPPED_KEY] = json.dumps(skipped)
        contents = FileContents(
            producer=self._model.producer_name or "onnx",
            stored=tuple(stored),
            links=links,
            manifest_json=manifest_json,
            metadata=metadata,
        )
        return contents, by_name

    def contents(self) -> FileContents:
        """Initializers by name; for a file without a paramio manifest, those that are not parameters
        (exporter constants) have kind ``constant``, and a torch export's renamed initializers get their
        state-dict names back."""
        return self._contents

    def read(self, name: str) -> torch.Tensor:
        init = self._by_name.get(name)
        if init is None:
            raise FormatError(f"{self.path}: no tensor `{name}`")
        dtype = torch_dtype(init.dtype)
        if init.typed is not None:
            return torch.from_numpy(_typed_array(init.typed, init.dtype)).view(dtype).reshape(init.shape)
        if init.raw is not None:
            file, (start, end) = self.path, init.raw
        elif init.external is not None:
            file, start, length = init.external
            end = start + length
        else:
            file, start, end = self.path, 0, 0
        if end == start:
            return torch.empty(init.shape, dtype=dtype)
        source = self._sources.get(file)
        if source is None or source.closed:
            raise FormatError(f"{self.path}: read after close")
        return source.tensor(start, end - start, dtype).view(init.shape)

    def graph(self) -> onnx.ModelProto | None:
        """The model's computation graph without the stored tensors, uses renamed to their stored names (see
        ``graph_copy``); None for a weights container."""
        from .graph_copy import graph_template

        stored = {init.name: name for name, init in self._by_name.items()}
        for alias, canonical in self._contents.links.items():  # one external byte range: the canonical's
            stored.setdefault(alias, canonical)
        return graph_template(self._model, self._sources[self.path].fd, stored, self.path)

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()
