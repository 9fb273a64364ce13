"""ONNX: initializers named by canonical names, each tie stored once, the manifest in
``metadata_props["paramio.manifest"]``.

With ``example_inputs`` (and a model) the file is the model's exported graph, runnable in onnxruntime; the
graph's uses of an alias refer to the canonical initializer (see ``export``). Without them it is a
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

Modules: ``writer`` (the streamed message), ``external`` (external data names and clean-up), ``reader``
(the field walk), ``torch_notes`` (what torch's exporters record), ``export`` (the model's graph from
``torch.onnx.export``), ``codes`` and ``protowire`` (ONNX's and protobuf's vocabulary).

The reader opens the model file, and each external data file once its location is checked, when it is
opened, and maps from those descriptors only: a file replaced by name afterwards (a concurrent save) does
not mix into what it reads.
"""

from __future__ import annotations

from ..base import MANIFEST_KEY, SKIPPED_KEY, Format
from .codes import CONSTANTS_KEY, PROTOBUF_LIMIT
from .reader import ONNXReader
from .writer import ONNXWriter

__all__ = ["ONNXFormat", "ONNXReader", "ONNXWriter", "MANIFEST_KEY", "CONSTANTS_KEY", "SKIPPED_KEY", "PROTOBUF_LIMIT"]


class ONNXFormat(Format):
    name = "onnx"
    suffixes = (".onnx",)
    #: example_inputs: export the model's graph; external_data: True forces one data file beside the model
    #: (None: only over the 2 GB limit); dynamic_shapes: passed to torch.onnx.export.
    #: graph: an ONNX model's graph without its stored tensors (``Reader.graph``, for convert).
    options = ("example_inputs", "external_data", "dynamic_shapes", "graph")

    reader_class = ONNXReader
    writer_class = ONNXWriter
