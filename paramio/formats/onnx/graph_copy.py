"""An ONNX model's computation graph without its stored tensors, so that ``convert`` from ONNX to ONNX keeps
the graph (the writer streams the tensors back in under their names, as for ``save(example_inputs=...)``).

The file is walked as the reader walks it (``protowire``): every graph field is kept except the initializer
records of stored tensors, which are dropped from the name in their header without their data being read or
copied. Initializers that are not stored tensors (the exporter's constants, types paramio skips) are kept
whole; one whose data is in an external file is refused (it would have to travel with the model). Where the
stored name differs from the initializer's (a torch export's renamed parameters, an alias linked by a shared
external byte range), every use in the graph is renamed to the stored name, subgraphs included.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ...errors import FormatError
from .protowire import LEN, VARINT, fields

__all__ = ["CONTAINER_GRAPH", "graph_template"]

#: The graph name of paramio's weights containers (no computation to keep).
CONTAINER_GRAPH = "paramio_weights"
_INITIALIZER, _NAME, _DATA_LOCATION, _EXTERNAL = 5, 8, 14, 1


def _initializer_facts(buf: mmap.mmap, start: int, end: int, fail) -> tuple[str, bool]:
    """(name, keeps its data externally) of one initializer record, read from its small fields only."""
    name, external = "", False
    for f in fields(buf, start, end, fail):
        if f.number == _NAME and f.wire == LEN:
            name = bytes(buf[f.start:f.end]).decode("utf-8", "replace")
        elif f.number == _DATA_LOCATION and f.wire == VARINT:
            external = f.value == _EXTERNAL
    return name, external


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph of its nodes' attributes (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _rename(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    for g in _graphs(graph):
        for node in g.node:
            for i, value in enumerate(node.input):
                if value in names:
                    node.input[i] = names[value]
        for info in (*g.input, *g.output, *g.value_info):
            if info.name in names:
                info.name = names[info.name]


def graph_template(model_fields: onnx.ModelProto, fd: int, stored: Mapping[str, str], path: Path
                   ) -> onnx.ModelProto | None:
    """The model (``model_fields``: its fields other than the graph) with its graph read from descriptor
    ``fd``, without the initializers named in ``stored`` (initializer name -> stored name), uses renamed to
    the stored names. None for a weights container or a graph without nodes."""

    def fail(problem: str) -> None:
        raise FormatError(f"{path}: not a valid ONNX model: {problem}")

    kept = bytearray()
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
        for f in fields(buf, 0, len(buf), fail):
            if f.number != 7 or f.wire != LEN:
                continue
            for g in fields(buf, f.start, f.end, fail):
                if g.number == _INITIALIZER and g.wire == LEN:
                    name, external = _initializer_facts(buf, g.start, g.end, fail)
                    if name in stored:
                        continue
                    if external:
                        raise FormatError(f"{path}: the graph's constant `{name}` keeps its data in an external "
                                          "file, which a converted graph cannot carry; convert to another format "
                                          "(the tensors only) or re-export the model")
                kept += buf[g.key_start:g.end]
    try:
        graph = onnx.GraphProto.FromString(bytes(kept))
    except (DecodeError, RecursionError) as e:
        raise FormatError(f"{path}: not a valid ONNX model: the graph does not parse ({e})") from e
    if graph.name == CONTAINER_GRAPH or not graph.node:
        return None
    renames = {old: new for old, new in stored.items() if old != new}
    if renames:
        taken = {out for g in _graphs(graph) for node in g.node for out in node.output}
        taken |= {init.name for init in graph.initializer}
        clash = sorted(set(renames.values()) & taken)
        if clash:
            raise FormatError(f"{path}: the graph already has a value named `{clash[0]}`, the name its tensor "
                              "gets; convert to another format (the tensors only)")
        _rename(graph, renames)
    model = onnx.ModelProto()
    model.CopyFrom(model_fields)
    model.graph.CopyFrom(graph)
    return model
