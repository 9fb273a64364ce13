"""Writing ONNX: a ``ModelProto`` streamed field by field (see the package docstring), each tensor's bytes
going straight from the tensor to the file or to its external data file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import onnx
import torch
import xxhash
from onnx import TensorProto, helper

from ..._version import __version__
from ...atomic import Staging
from ...errors import FormatError, InternalError
from ...manifest import Manifest, TensorEntry
from .._mapped import ITEMSIZE
from ..base import MANIFEST_KEY, Writer
from .codes import CODES, CONSTANTS_KEY, PROTOBUF_LIMIT
from .external import KEY_HEX, data_name, folder_lock, own_data_files, remove_unused
from .protowire import field_header, varint

__all__ = ["ONNXWriter", "CONTAINER_OPSET", "CONTAINER_IR_VERSION"]

#: Weights containers: Identity on float8 needs opset 19; 21 is what onnxruntime and onnx both run.
CONTAINER_OPSET = 21
CONTAINER_IR_VERSION = 10
#: External data alignment: small tensors to 64 bytes, large ones (>= 1 MiB) to 64 KiB so that they can
#: be memory-mapped on any platform (onnx's own save_model uses the same 64 KiB granularity).
_ALIGN, _ALIGN_LARGE, _LARGE = 64, 65536, 1 << 20
#: onnxruntime has no complex tensor type: a container stores such tensors but does not output them.
_NOT_RUNNABLE = {"complex64", "complex128"}


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
            tensor_type=onnx.TypeProto.Tensor(elem_type=CODES[entry.dtype], shape=shape))))
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
    code = CODES[entry.dtype]
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
            if entry.dtype not in CODES:
                raise FormatError(f"tensor `{entry.name}`: dtype {entry.dtype} has no ONNX type")
        model, example, graph = options.get("model"), options.get("example_inputs"), options.get("graph")
        if graph is not None:  # an ONNX file's own graph, without its stored tensors (convert)
            proto = onnx.ModelProto()
            proto.CopyFrom(graph)
        elif model is not None and example is not None:
            from .export import export_graph

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
        self._placeholder = data_name(final.name, "0" * KEY_HEX)
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
            tensor = TensorProto(name=entry.name, data_type=CODES[entry.dtype], dims=list(entry.shape))
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
            raise InternalError(f"tensor `{entry.name}` given where `{slot.name}` was due")
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
            raise InternalError("fewer tensors written than the manifest lists")
        self._file.write(self._constant_bytes)
        self._file.write(self._graph_tail)
        if self._file.tell() - self._graph_start != self._graph_size() - len(self._graph_head):
            raise InternalError("the ONNX graph came out a different size than planned")
        self._file.write(self._model_tail(manifest))
        if self._data_temp is not None:
            key = (self._hash.hexdigest() if self._hash is not None
                   else hashlib.blake2b(manifest.to_json().encode(), digest_size=KEY_HEX // 2).hexdigest())
            name = data_name(self.final.name, key)
            for at in self._locations:
                self._file.seek(at)
                self._file.write(name.encode())
            self.staging.retarget(self._data_temp, self.final.with_name(name))
        for fh in (self._file, self._data):
            if fh is not None:
                self.staging.sync(fh)
                fh.close()
        keep = set()
        if self._data_temp is not None:
            keep.add(self.final.with_name(name).resolve())
        if keep or own_data_files(self.final):  # only files bearing paramio's name for this model are removed
            self.staging.hold(folder_lock(self.final.parent))
            self.staging.after_commit(lambda: remove_unused(self.final, keep))

    def abort(self) -> None:
        for fh in (self._file, self._data):
            if fh is not None:
                fh.close()
