"""The model's graph for ``save(model, "m.onnx", example_inputs=...)``, with initializers renamed to
paramio's canonical names and the stored tensors' data taken out (the writer streams it in).

Exporter choice: the dynamo exporter (``torch.onnx.export(dynamo=True)``), with its ONNX optimizer off.

* It is torch's default and maintained exporter; the TorchScript one (``dynamo=False``) is deprecated.
* It hands back an in-memory IR whose initializers wrap the model's own tensors, so each initializer is
  matched to its parameter by *memory* (storage, offset, shape, strides, dtype), not by a name the exporter
  made up (it names a shared layer after its last use, ``4.weight``), and the exporter's copy of the
  weights is never serialized: the graph is serialized without them and paramio writes each stored tensor
  once.
* ``optimize=False`` because the optimizer constant-folds ``Transpose(weight)`` and ``Slice(weight)`` into
  new initializers: a transposed copy of a tied embedding/LM head (pytorch #108342) and of every Linear
  weight. Unoptimized, those stay runtime ops over the one stored tensor.

Initializers that are not parameters or buffers of the model (lifted tensor constants, non-persistent
buffers) stay in the graph as *constants*; the writer records their names so that readers keep them apart
from the parameters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...dtypes import torch_dtype
from ...errors import FormatError
from ...manifest import Manifest

__all__ = ["export_graph"]


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _arguments(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
        f"not {type(example_inputs).__name__}"
    )


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter reports progress on stdout, logs about optional packages (torchvision) and logs a
    failed trace before raising it: noise in a library call. Errors still raise, with their cause."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._subclasses")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)  # a failed trace logs its traceback before raising it to us
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # torch's own deprecations are not the user's to fix; UserWarnings (training mode...) still show
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _exporter_modules(where: str) -> Any:
    """``onnx_ir``, checked with ``onnxscript`` before anything else: torch's graph exporter needs both (they
    are paramio dependencies; an install without them gets the command that fixes it, not an ImportError)."""
    try:
        import onnx_ir
        import onnxscript  # noqa: F401 - the dynamo exporter imports it
    except ImportError as e:
        raise FormatError(f"{where}: exporting a graph needs the onnxscript package, which is missing ({e.name}); "
                          "install it with `pip install onnxscript` (paramio depends on it), or save without "
                          "example_inputs for a weights-only ONNX file") from e
    return onnx_ir


def _run_exporter(model: nn.Module, example_inputs: Any, dynamic_shapes: Any, where: str) -> Any:
    args, kwargs = _arguments(example_inputs)
    modes = {m: m.training for m in model.modules()}
    try:
        # An ONNX file is for inference elsewhere: export in eval mode (dropout off, batch norm on its running
        # statistics), as the TorchScript exporter did by default, and give the model its modes back.
        model.eval()
        with _quiet():
            return torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, optimize=False, verbose=False,
                                     dynamic_shapes=dynamic_shapes)
    except Exception as e:  # the exporter raises many types; all mean "this model did not export"
        raise FormatError(f"{where}: torch.onnx.export failed: {_root_cause(e)}") from e
    finally:
        for module, training in modes.items():
            module.training = training


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost cause (the exporter wraps it in several layers of advice)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _cast_error(where: str, name: str, computes: torch.dtype, stores: str) -> FormatError:
    return FormatError(
        f"{where}: tensor `{name}`: the graph computes with {computes} but the file would store {stores}; "
        "cast the model itself (model.to(...)) before exporting, or save without example_inputs for a "
        "weights-only file"
    )


def export_graph(model: nn.Module, example_inputs: Any, draft: Manifest, *, dynamic_shapes: Any = None,
                 where: str = "onnx") -> Any:
    """Export ``model``: an ``onnx.ModelProto`` whose graph refers to the stored tensors by their canonical
    names but holds no initializer for them (only the exporter's constants), and in which no other value
    carries the name of a stored tensor (the writer adds every stored tensor as an initializer)."""
    ir = _exporter_modules(where)
    state = model.state_dict(keep_vars=True)
    for entry in draft.tensors:  # refuse before the (slow) export what its result could not hold
        tensor = state.get(entry.name)
        if isinstance(tensor, torch.Tensor) and tensor.dtype != torch_dtype(entry.dtype):
            raise _cast_error(where, entry.name, tensor.dtype, entry.dtype)
    program = _run_exporter(model, example_inputs, dynamic_shapes, where)
    graph = program.model.graph
    mapped = _take_stored_initializers(graph, state, draft, where)
    _free_stored_names(graph, {t.name for t in draft.tensors})
    for canonical, value in mapped.items():  # the model's tensors under their canonical names
        value.name = canonical
    return ir.serde.serialize_model(program.model)


def _take_stored_initializers(graph: Any, state: dict[str, Any], draft: Manifest, where: str) -> dict[str, Any]:
    """Remove the initializers that are the model's tensors from ``graph``: canonical name -> IR value (a
    tensor the exporter made two initializers of is one, its other uses redirected)."""
    alias_of = draft.alias_map()
    entries = {t.name: t for t in draft.tensors}
    view_names = {v.name: v.base for v in draft.views}
    by_memory: dict[tuple, str] = {}
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.numel() > 0:
            by_memory.setdefault(_key(tensor), name)
    mapped: dict[str, Any] = {}
    for exporter_name in list(graph.initializers):
        value = graph.initializers[exporter_name]
        raw = getattr(value.const_value, "raw", None)
        name = by_memory.get(_key(raw)) if isinstance(raw, torch.Tensor) and raw.numel() > 0 else None
        if name is None:
            continue  # a constant of the exporter: it stays in the graph as it is
        canonical = alias_of.get(name, name)
        if canonical in view_names:
            raise FormatError(
                f"{where}: tensor `{canonical}` is a partial alias (a view into `{view_names[canonical]}`), which "
                "a graph cannot refer to without a copy; save without example_inputs for a weights-only file, "
                "or .clone() it in the model"
            )
        entry = entries.get(canonical)
        if entry is None:
            raise FormatError(f"{where}: the exported graph uses `{name}`, which the checkpoint does not store")
        if torch_dtype(entry.dtype) != raw.dtype:
            raise _cast_error(where, canonical, raw.dtype, entry.dtype)
        graph.initializers.pop(exporter_name)
        if canonical in mapped:  # the same tensor exported twice: keep one initializer
            value.replace_all_uses_with(mapped[canonical], replace_graph_outputs=True)
            continue
        mapped[canonical] = value
    return mapped


def _free_stored_names(graph: Any, stored: set[str]) -> None:
    """Rename any other value carrying a stored tensor's name (the exporter names a node's output after its
    op, `linear`, `add`, which can be a top-level parameter's or buffer's name)."""
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | set(stored)
    taken |= {out.name for node in graph for out in node.outputs}
    others = list(graph.inputs) + [out for node in graph for out in node.outputs] + list(graph.initializers.values())
    for value in others:
        if value.name in stored:
            fresh, n = value.name, 1
            while fresh in taken:
                fresh, n = f"{value.name}__{n}", n + 1
            taken.add(fresh)
            if value.is_initializer():
                graph.initializers.pop(value.name)
                value.name = fresh
                graph.register_initializer(value)
            else:
                value.name = fresh
