"""ONNX: initializers named by canonical names, each tie stored once, the manifest in
``metadata_props["paramio.manifest"]``.

With ``example_inputs`` (and a model) the file is the model's exported graph, runnable in onnxruntime; the
graph's uses of an alias refer to the canonical initializer (see ``_onnx_export``). Without them it is a
*weights container*: a graph with no inputs whose outputs are each stored tensor through an ``Identity``
node, so that stock ONNX tools can both load and run it.

Writing never builds the model in memory with the weights in it (the stock ``numpy_helper`` /
``make_model`` / ``save_model`` path copies every tensor about four times): the message is written field
by field with lengths computed from the manifest up front, each tensor's bytes going straight from the
tensor to the file (or, with external data, to the data file beside it). The fields come in field-number
order, as protobuf itself writes them; the one liberty is a ``data_type`` varint widened (same value) so
that each tensor's bytes start at a multiple of its element size. Reading walks the fields and records
where each tensor's bytes lie, then maps them lazily (no copy); only the small non-tensor parts are parsed
by protobuf.

Models over the 2 GB protobuf limit use ONNX external data automatically (``external_data=True`` forces
it): one data file beside the model, offsets aligned, named ``<model>.<16 hex digits>.data`` (e.g.
``lm.onnx.3f09c2a17b5e84d0.data``) after its content: a hash of the final manifest, whose checksums cover
every byte, or with ``checksum=None`` an xxh3-64 of the data and its offsets. The same input gives the same
name (and bytes); another content, another name, so a save never renames new data over the name the
current model reads: the data file is renamed first, under its new name, and the model rename is the one
commit point. A write killed between the two leaves the old model with its old data. After the commit the
data file of the previous version is removed if the new model does not use it (only a name of this form
for this model, nothing else). The name goes into each tensor's ``location`` at ``finish`` (the records
are written with a placeholder of the same length, then patched).

The reader opens the model file, and each external data file once its location is checked, when it is
opened, and maps from those descriptors only: a file replaced by name afterwards (a concurrent save) does
not mix into what it reads.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
import xxhash
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from .._version import __version__
from ..atomic import Staging
from ..dtypes import torch_dtype
from ..errors import FormatError
from ..manifest import Manifest, TensorEntry
from ._protowire import LEN, field_header, fields, varint
from ._mapped import ITEMSIZE, MappedFile
from .base import MANIFEST_KEY, SKIPPED_KEY, FileContents, Format, Reader, StoredTensor, Writer

__all__ = ["ONNXFormat", "ONNXReader", "ONNXWriter", "MANIFEST_KEY", "CONSTANTS_KEY", "SKIPPED_KEY", "PROTOBUF_LIMIT"]

#: Names of initializers that are graph constants of the exporter, not parameters (JSON list).
CONSTANTS_KEY = "paramio.onnx.constants"
#: protobuf refuses messages of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
#: Weights containers: Identity on float8 needs opset 19; 21 is what onnxruntime and onnx both run.
CONTAINER_OPSET = 21
CONTAINER_IR_VERSION = 10
#: External data alignment: small tensors to 64 bytes, large ones (>= 1 MiB) to 64 KiB so that they can
#: be memory-mapped on any platform (onnx's own save_model uses the same 64 KiB granularity).
_ALIGN, _ALIGN_LARGE, _LARGE = 64, 65536, 1 << 20
_MAX_RANK = 64
#: Hex digits of the content hash in an external data file's name.
_KEY_HEX = 16


def _data_name(model: str, key: str) -> str:
    """The external data file name of model file ``model`` for content hash ``key``."""
    return f"{model}.{key}.data"


def _data_pattern(model: str) -> re.Pattern[str]:
    """paramio's own external data file names for ``model``: the only files a save ever removes."""
    return re.compile(rf"{re.escape(model)}\.[0-9a-f]{{{_KEY_HEX}}}\.data")

# manifest dtype name <-> TensorProto.DataType
_CODES: dict[str, int] = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16, "float8_e4m3fn": TensorProto.FLOAT8E4M3FN,
    "float8_e5m2": TensorProto.FLOAT8E5M2, "complex64": TensorProto.COMPLEX64,
    "complex128": TensorProto.COMPLEX128, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
    "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint64": TensorProto.UINT64,
    "uint32": TensorProto.UINT32, "uint16": TensorProto.UINT16, "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}
_NAMES = {code: name for name, code in _CODES.items()}
#: onnxruntime has no complex tensor type: a container stores such tensors but does not output them.
_NOT_RUNNABLE = {"complex64", "complex128"}
#: Initializer names the torch exporters give to graph constants they create (TorchScript ``onnx::Op_N``
#: and scoped ``/...`` names, dynamo ``val_N`` and lifted tensor constants). Only used for files without a
#: paramio manifest; such a file says nothing else about which initializers are parameters.
_CONSTANT_NAME = re.compile(r"::|^/|^_?val_\d+$|^_tensor_constant\d+$|^c_lifted_tensor_\d+$")


# -- writing -------------------------------------------------------------------------------------------------
def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _split(message: Any, number: int) -> tuple[bytes, bytes]:
    """A message's serialized fields before and after field ``number`` (which is left out)."""
    head, tail = type(message)(), type(message)()
    head.CopyFrom(message)
    tail.CopyFrom(message)
    for fd, _ in head.ListFields():
        if fd.number >= number:
            head.ClearField(fd.name)
    for fd, _ in tail.ListFields():
        if fd.number <= number:
            tail.ClearField(fd.name)
    return head.SerializeToString(deterministic=True), tail.SerializeToString(deterministic=True)


def _container(draft: Manifest) -> onnx.ModelProto:
    """A graph without inputs that outputs every stored tensor through an Identity node."""
    names = {t.name for t in draft.tensors}
    nodes, outputs = [], []
    # The protos are built directly, not through onnx.helper's make_node / make_tensor_value_info, which
    # cost ~10 µs a tensor in checks and copies that these plain messages do not need.
    Dim = onnx.TensorShapeProto.Dimension  # noqa: N806 - a class
    for entry in draft.tensors:
        if entry.dtype in _NOT_RUNNABLE:
            continue
        out = f"{entry.name}:out"
        while out in names:
            out += ":out"
        names.add(out)
        nodes.append(onnx.NodeProto(op_type="Identity", input=[entry.name], output=[out]))
        shape = onnx.TensorShapeProto(dim=[Dim(dim_value=d) for d in entry.shape])
        outputs.append(onnx.ValueInfoProto(name=out, type=onnx.TypeProto(
            tensor_type=onnx.TypeProto.Tensor(elem_type=_CODES[entry.dtype], shape=shape))))
    graph = helper.make_graph(nodes, "paramio_weights", [], outputs,
                              doc_string="Weights container written by paramio: each output is a stored tensor.")
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", CONTAINER_OPSET)],
                             ir_version=CONTAINER_IR_VERSION)


def _fixed_varint(value: int, size: int) -> bytes:
    """``value`` as a varint of exactly ``size`` bytes (continuation bits on zero-valued high groups).
    Every protobuf parser accepts such a varint for an int32 field: negative int32s always take 10 bytes."""
    natural = varint(value)
    if size < len(natural):
        raise ValueError(f"{value} does not fit a {size}-byte varint")
    if size == len(natural):
        return natural
    # the last group gets its continuation bit, then zero groups with theirs, then a final zero group
    return natural[:-1] + _ONE_BYTE_CONTINUED[natural[-1]] + b"\x80" * (size - len(natural) - 1) + b"\x00"


_ONE_BYTE_CONTINUED = tuple(bytes((i | 0x80,)) for i in range(128))


def _inline_prefix(entry: TensorEntry, nbytes: int, at: int, align: int) -> bytes:
    """The bytes of an initializer record before its data, for a record starting at file offset ``at``.

    Protobuf puts ``raw_data`` wherever the fields before it end, and a float32 at an odd offset cannot
    be mapped, only copied. The record is protobuf's own encoding (dims, data_type, name, raw_data) except
    that ``data_type``'s varint takes up to 10 bytes instead of 1 where that puts the data at a multiple
    of ``align``; the values are unchanged for every parser.
    """
    name = entry.name.encode("utf-8")
    dims = b"".join(b"\x08" + varint(d) for d in entry.shape)
    after = b"\x42" + varint(len(name)) + name + b"\x4a" + varint(nbytes)
    code = _CODES[entry.dtype]
    for width in range(len(varint(code)), 11):
        body = dims + b"\x10" + _fixed_varint(code, width) + after
        prefix = b"\x2a" + varint(len(body) + nbytes) + body
        if (at + len(prefix)) % align == 0:
            return prefix
    body = dims + b"\x10" + varint(code) + after  # complex128 may not fit: the reader copies it
    return b"\x2a" + varint(len(body) + nbytes) + body


@dataclass(frozen=True)
class _Slot:
    """Where one stored tensor goes: the bytes before its data in the model file, its data size, and for
    external data the offset in the data file (its record then holds no data)."""

    name: str
    prefix: bytes
    nbytes: int
    offset: int | None
    location_at: int | None = None  # where the data file's name starts in ``prefix`` (patched in finish)

    @property
    def size(self) -> int:
        return len(self.prefix) + (self.nbytes if self.offset is None else 0)


class ONNXWriter(Writer):
    """Streams a ``ModelProto``: model fields before the graph, the graph's nodes, one initializer record
    per ``write_tensor``, the exporter's constants, the graph's inputs/outputs, then (``finish``) the
    model fields after the graph with the final manifest in ``metadata_props``."""

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        super().__init__(temp, final, staging, draft, options)
        for entry in draft.tensors:
            if entry.dtype not in _CODES:
                raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no ONNX type")
        model, example = options.get("model"), options.get("example_inputs")
        if model is not None and example is not None:
            from ._onnx_export import export_graph

            proto = export_graph(model, example, draft, dynamic_shapes=options.get("dynamic_shapes"),
                                 where=str(final))
        else:
            proto = _container(draft)
        proto.producer_name, proto.producer_version = "paramio", __version__
        proto.ClearField("metadata_props")  # paramio's own are written in finish()
        self._constants = list(proto.graph.initializer)
        proto.graph.ClearField("initializer")
        self._proto = proto
        self._model_head, _ = _split(proto, 7)
        self._graph_head, self._graph_tail = _split(proto.graph, 5)
        self._constant_bytes = b"".join(
            field_header(5, c.ByteSize()) + c.SerializeToString(deterministic=True) for c in self._constants
        )

        choice = options.get("external_data")
        # Temporaries are named after this fixed name, so that remove_stale finds those of killed writes;
        # the data file's real name (its content hash) is known in finish(), see the module docstring.
        self._data_staged = final.with_name(final.name + ".data")
        self._placeholder = _data_name(final.name, "0" * _KEY_HEX)
        self._plan(external=False)
        if choice is True or (choice is None and self._model_size(draft) > PROTOBUF_LIMIT):
            self._plan(external=True)
        elif self._model_size(draft) > PROTOBUF_LIMIT:
            raise FormatError(f"{final}: the model would be {self._model_size(draft)} bytes, over protobuf's "
                              "2 GiB limit; save with external_data=True (or leave it unset)")
        self._external = any(s.offset is not None for s in self._slots)

        self._index = 0
        self._locations: list[int] = []  # file positions of the placeholder names
        # Without checksums the manifest does not tell contents apart: hash the data as it is written.
        self._hash = None if all(t.checksum for t in draft.tensors) else xxhash.xxh3_64()
        # Only data files bearing paramio's name for this model are ever removed: without any, the previous
        # model need not be read (a 20,000-tensor model takes ~0.3 s to scan).
        self._previous = (_data_files(final) or set()) if _own_data_files(final) else set()
        self._data: BinaryIO | None = None
        self._data_temp: Path | None = None
        self._file: BinaryIO = open(temp, "wb")
        try:
            if self._external:
                self._data_temp = staging.temp_for(self._data_staged)
                self._data = open(self._data_temp, "wb")
            self._file.write(self._model_head)
            self._file.write(b"\x3a" + _fixed_varint(self._graph_size(), self._length_size))  # field 7, LEN
            self._file.write(self._graph_head)
        except BaseException:
            self.abort()
            raise
        self._graph_start = self._file.tell()

    # -- the plan ---------------------------------------------------------------------------------------
    def _plan(self, *, external: bool) -> None:
        """Set ``_slots`` (each tensor's record) and ``_length_size`` (bytes of the graph's length prefix)."""
        if not external:
            self._plan_inline()
            return
        slots, offset = [], 0
        for entry in self.draft.tensors:
            nbytes = entry.numel * ITEMSIZE[entry.dtype]
            tensor = TensorProto(name=entry.name, data_type=_CODES[entry.dtype], dims=list(entry.shape))
            if nbytes:
                offset += -offset % (_ALIGN_LARGE if nbytes >= _LARGE else _ALIGN)
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", self._placeholder), ("offset", str(offset)),
                                   ("length", str(nbytes))):
                    tensor.external_data.add(key=key, value=value)
                body = tensor.SerializeToString(deterministic=True)
                prefix = field_header(5, len(body)) + body
                # the last occurrence: only digits and keys follow the location's value
                slots.append(_Slot(entry.name, prefix, nbytes, offset, prefix.rfind(self._placeholder.encode())))
                offset += nbytes
            else:
                slots.append(_Slot(entry.name, _inline_prefix(entry, 0, 0, 1), 0, None))
        self._slots = slots
        self._length_size = len(varint(self._graph_size()))

    def _plan_inline(self) -> None:
        """Records whose data starts at a multiple of the element size in the file, so that reading maps
        it without a copy. Positions depend on the size of the graph's length prefix, which depends on the
        records: plan again with the larger size until it holds (the prefix may then be one byte longer
        than needed, which parsers accept as they accept any varint of at most 5 bytes for a length). The
        first size tried is that of a lower bound of the graph's size (its data and names), which is almost
        always the final one: one pass instead of two."""
        least = (len(self._graph_head) + len(self._constant_bytes) + len(self._graph_tail)
                 + sum(entry.numel * ITEMSIZE[entry.dtype] + len(entry.name) for entry in self.draft.tensors))
        self._length_size = len(varint(least))
        while True:
            at = len(self._model_head) + 1 + self._length_size + len(self._graph_head)
            slots = []
            for entry in self.draft.tensors:
                nbytes = entry.numel * ITEMSIZE[entry.dtype]
                prefix = _inline_prefix(entry, nbytes, at, ITEMSIZE[entry.dtype])
                slots.append(_Slot(entry.name, prefix, nbytes, None))
                at += len(prefix) + nbytes
            self._slots = slots
            needed = len(varint(self._graph_size()))
            if needed <= self._length_size:
                return
            self._length_size = needed

    def _graph_size(self) -> int:
        return (len(self._graph_head) + sum(s.size for s in self._slots) + len(self._constant_bytes)
                + len(self._graph_tail))

    def _model_tail(self, manifest: Manifest) -> bytes:
        tail = onnx.ModelProto()
        tail.CopyFrom(self._proto)
        for fd, _ in tail.ListFields():
            if fd.number <= 7:
                tail.ClearField(fd.name)
        tail.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
        if self._constants:
            tail.metadata_props.add(key=CONSTANTS_KEY, value=json.dumps([c.name for c in self._constants]))
        for key, value in manifest.metadata.items():  # visible to stock tools (onnxruntime's custom map)
            if not key.startswith("paramio."):
                tail.metadata_props.add(key=key, value=value)
        return tail.SerializeToString(deterministic=True)

    def _model_size(self, draft: Manifest) -> int:
        return len(self._model_head) + 1 + self._length_size + self._graph_size() + len(self._model_tail(draft))

    # -- the stream -------------------------------------------------------------------------------------
    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        slot = self._slots[self._index]
        self._index += 1
        if entry.name != slot.name:
            raise FormatError(f"internal error: tensor `{entry.name}` given where `{slot.name}` was due")
        data = _as_bytes(tensor)
        if data.nbytes != slot.nbytes:
            raise FormatError(f"tensor `{entry.name}`: {data.nbytes} bytes given, {slot.nbytes} expected")
        if slot.location_at is not None:
            self._locations.append(self._file.tell() + slot.location_at)
        self._file.write(slot.prefix)
        if slot.offset is None:
            self._file.write(data)
        else:
            assert self._data is not None
            pad = slot.offset - self._data.tell()
            if pad:
                self._data.write(b"\0" * pad)
            self._data.write(data)
            if self._hash is not None:
                self._hash.update(slot.offset.to_bytes(8, "little"))
                self._hash.update(data)

    def finish(self, manifest: Manifest) -> None:
        if self._index != len(self._slots):
            raise FormatError("internal error: fewer tensors written than the manifest lists")
        self._file.write(self._constant_bytes)
        self._file.write(self._graph_tail)
        if self._file.tell() - self._graph_start != self._graph_size() - len(self._graph_head):
            raise FormatError("internal error: the ONNX graph came out a different size than planned")
        self._file.write(self._model_tail(manifest))
        if self._data_temp is not None:
            key = (self._hash.hexdigest() if self._hash is not None
                   else hashlib.blake2b(manifest.to_json().encode(), digest_size=_KEY_HEX // 2).hexdigest())
            name = _data_name(self.final.name, key)
            for at in self._locations:
                self._file.seek(at)
                self._file.write(name.encode())
            self.staging.retarget(self._data_temp, self.final.with_name(name))
        for fh in (self._file, self._data):
            if fh is not None:
                self.staging.sync(fh)
                fh.close()
        if self._previous:
            self.staging.after_commit(lambda: _remove_unused(self.final, self._previous))

    def abort(self) -> None:
        for fh in (self._file, self._data):
            if fh is not None:
                fh.close()


def _data_files(model: Path) -> set[Path] | None:
    """The external data files (resolved) that the ONNX model at ``model`` reads: empty for no file, None
    for a file that does not read (a save then removes nothing)."""
    if not model.is_file():
        return set()
    try:
        with ONNXReader(model) as reader:
            return {init.external[0] for init in reader._inits.values() if init.external is not None}
    except Exception:  # noqa: BLE001 - best effort: whatever file the previous save left, or a foreign one
        return None


def _own_data_files(model: Path) -> bool:
    """Whether the model's folder holds any data file bearing paramio's name for ``model``."""
    pattern = _data_pattern(model.name)
    try:
        with os.scandir(model.parent) as entries:
            return any(pattern.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def _remove_unused(model: Path, previous: set[Path]) -> None:
    """After a save of ``model``: remove the data files the previous version used that the model now there
    (this save's, or a concurrent one's) does not, if they bear paramio's name for this model."""
    current = _data_files(model)
    if current is None:
        return
    folder, pattern = model.parent.resolve(), _data_pattern(model.name)
    for file in previous - current:
        if file.parent == folder and pattern.fullmatch(file.name):
            file.unlink(missing_ok=True)


# -- reading -------------------------------------------------------------------------------------------------
_VALUE_INFO, _GRAPH_METADATA = 13, 16  # GraphProto fields
#: What the dynamo exporter records about each initializer (value_info metadata) and the exported
#: program's signature (graph metadata), which maps its node names back to state-dict names.
_TORCH_SIGNATURE = "pkg.torch.export.ExportedProgram.graph_signature"
_SPEC_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_SPEC_PERSISTENT = "pkg.torch.export.graph_signature.InputSpec.persistent"
_NODE_NAME = "pkg.torch.onnx.original_node_name"
_SIGNATURE_LINE = re.compile(r"^(\S+): (\w+) target='([^']*)'")


def _torch_roles(graph: onnx.GraphProto, initializers: set[str]) -> dict[str, tuple[str, str]] | None:
    """initializer -> (kind, state-dict name) for the model's parameters and persistent buffers in a file
    from torch's dynamo exporter; None for a file without its notes. Anything else the exporter made an
    initializer of (folded values, lifted or non-persistent tensors) is a constant."""
    notes = {p.key: p.value for p in graph.metadata_props}
    if _TORCH_SIGNATURE not in notes:
        return None
    targets = {}
    for line in notes[_TORCH_SIGNATURE].splitlines():
        match = _SIGNATURE_LINE.match(line.strip())
        if match:
            targets[match.group(1)] = match.group(3)
    roles = {}
    for info in graph.value_info:
        if info.name not in initializers:
            continue
        meta = {p.key: p.value for p in info.metadata_props}
        spec = meta.get(_SPEC_KIND)
        if spec == "PARAMETER":
            kind = "parameter"
        elif spec == "BUFFER" and meta.get(_SPEC_PERSISTENT) != "False":
            kind = "buffer"
        else:
            continue
        roles[info.name] = (kind, targets.get(meta.get(_NODE_NAME, ""), info.name))
    return roles


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
        self._targets: dict[str, Path] = {}
        self._inits: dict[str, _Initializer] = {}
        self._graph_seen = False
        self._graph_notes = bytearray()  # value_info and metadata_props of the graph: the exporter's notes
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                self._size = os.fstat(fh.fileno()).st_size
                if self._size == 0:
                    raise self._fail("empty file (0 bytes)")
                self._sources[self.path] = MappedFile(os.dup(fh.fileno()), self._size)
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
                    elif g.number in (_VALUE_INFO, _GRAPH_METADATA):
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
        if len(proto.dims) > _MAX_RANK or any(d < 0 for d in proto.dims):
            raise self._fail(f"initializer `{name}`: dims {list(proto.dims)[:8]} must be at most {_MAX_RANK} "
                             "non-negative sizes")
        shape = tuple(int(d) for d in proto.dims)
        dtype = _NAMES.get(proto.data_type)
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
            source = self._sources[target] = MappedFile(fd, info.st_size)
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
                roles = _torch_roles(onnx.GraphProto.FromString(bytes(self._graph_notes)), set(self._inits))
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
            elif manifest_json is None and _CONSTANT_NAME.search(init.name):
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

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()


class ONNXFormat(Format):
    name = "onnx"
    suffixes = (".onnx",)
    #: example_inputs: export the model's graph; external_data: True forces one data file beside the model
    #: (None: only over the 2 GB limit); dynamic_shapes: passed to torch.onnx.export.
    options = ("example_inputs", "external_data", "dynamic_shapes")

    reader_class = ONNXReader
    writer_class = ONNXWriter
