"""What torch's ONNX exporters leave in a file about which initializers are the model's parameters and
buffers, and under which state-dict names: read for files without a paramio manifest."""

from __future__ import annotations

import re

import onnx

__all__ = ["VALUE_INFO", "GRAPH_METADATA", "CONSTANT_NAME", "torch_roles"]

#: Initializer names the torch exporters give to graph constants they create (TorchScript ``onnx::Op_N``
#: and scoped ``/...`` names, dynamo ``val_N`` and lifted tensor constants). Only used for files without a
#: paramio manifest; such a file says nothing else about which initializers are parameters.
CONSTANT_NAME = re.compile(r"::|^/|^_?val_\d+$|^_tensor_constant\d+$|^c_lifted_tensor_\d+$")
VALUE_INFO, GRAPH_METADATA = 13, 16  # GraphProto fields
#: What the dynamo exporter records about each initializer (value_info metadata) and the exported
#: program's signature (graph metadata), which maps its node names back to state-dict names.
_TORCH_SIGNATURE = "pkg.torch.export.ExportedProgram.graph_signature"
_SPEC_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_SPEC_PERSISTENT = "pkg.torch.export.graph_signature.InputSpec.persistent"
_NODE_NAME = "pkg.torch.onnx.original_node_name"
_SIGNATURE_LINE = re.compile(r"^(\S+): (\w+) target='([^']*)'")


def torch_roles(graph: onnx.GraphProto, initializers: set[str]) -> dict[str, tuple[str, str]] | None:
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
