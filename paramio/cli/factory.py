"""Models from the command line: ``package.module:callable`` (or ``path/to/file.py:callable``) imported and
called, optionally run forward once on ``--example-input`` tensors.

Everything that goes wrong here is the user's input (a module that does not import, a callable that
fails, a forward pass that raises), so it becomes an :class:`~paramio.cli.app.InputError` (exit 2) naming
the spec.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import TieError, UninitializedParameterError
from .app import InputError
from .hints import dotted_factory_hint, integer_input_hint
from .options import DynamicAxis, ExampleInput, example_tensors
from .render import one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["is_factory", "build_model", "model_from", "model_or_path", "about_model",
           "no_example_input_for_a_file", "not_a_dotted_factory", "dynamic_shapes"]


def is_factory(spec: str) -> bool:
    """``package.module:callable`` or ``path/to/file.py:callable``, and not an existing file."""
    if Path(spec).exists():
        return False
    target, sep, attr = spec.rpartition(":")
    return bool(sep and target and attr and all(part.isidentifier() for part in attr.split(".")))


def _import_file(spec: str, target: str) -> Any:
    path = Path(target)
    if not path.is_file():
        raise InputError(f"{spec}: no such file {target}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its neighbours
    free = path.stem.isidentifier() and path.stem not in sys.modules
    name = path.stem if free else f"_paramio_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"{spec}: cannot import {target} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _import_target(spec: str, target: str) -> Any:
    if target.endswith(".py") or "/" in target or os.sep in target:
        return _import_file(spec, target)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # a user's own module in the current folder (the console script lacks it)
    return importlib.import_module(target)


def build_model(spec: str) -> nn.Module:
    """Import ``module:callable`` and call it (or take the module instance it names)."""
    from torch import nn

    target, _, attr = spec.rpartition(":")
    try:
        obj = _import_target(spec, target)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{spec}: cannot import {target}: {type(e).__name__}: {one_line(e)}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{spec}: {target} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise InputError(f"{spec}: {attr} is neither a model nor a callable returning one")
        try:
            obj = obj()
        except Exception as e:
            raise InputError(f"{spec}: calling {attr}() failed: {type(e).__name__}: {one_line(e)}") from e
    if not isinstance(obj, nn.Module):
        raise InputError(f"{spec}: {attr}() returned a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _first_tensor(out: object) -> torch.Tensor | None:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, values) if t is not None), None)


def _run_forward(spec: str, model: nn.Module, examples: Sequence[ExampleInput], inputs: tuple[torch.Tensor, ...],
                 backward: bool) -> None:
    """One forward pass in eval mode (so batch-norm statistics stay as they are), and a backward one
    of the first output's sum when gradients are asked for."""
    import torch

    shapes = " ".join("x".join(map(str, t.shape)) or "scalar" for t in inputs)
    model.eval()
    try:
        with torch.set_grad_enabled(backward):
            out = model(*inputs)
            if backward:
                loss = _first_tensor(out)
                if loss is None or not loss.is_floating_point():
                    raise InputError(f"{spec}: --grads: the forward pass returned no floating tensor to "
                                     "backpropagate")
                loss.float().sum().backward()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{spec}: forward pass on --example-input {shapes} failed: "
                         f"{type(e).__name__}: {one_line(e)}{integer_input_hint(model, examples, e)}") from e


def model_from(spec: str, examples: Sequence[ExampleInput] | None, *, backward: bool = False
               ) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    """The model a factory builds, run forward once on the example inputs (if any); and those inputs."""
    model = build_model(spec)
    if not examples:
        return model, None
    try:
        inputs = example_tensors(examples)
    except (RuntimeError, MemoryError) as e:  # the allocation failed: the shape is too large for this machine
        raise InputError(f"{spec}: cannot make --example-input {' '.join(e.text for e in examples)}: "
                         f"{type(e).__name__}: {one_line(e)}") from e
    _run_forward(spec, model, examples, inputs, backward)
    return model, inputs


@contextlib.contextmanager
def about_model(spec: str | None) -> Iterator[None]:
    """Name the factory in errors about the model it built (ties that cannot be stored, lazy parameters)."""
    try:
        yield
    except (TieError, UninitializedParameterError) as e:
        if spec is None or not is_factory(spec):
            raise
        raise InputError(f"{spec}: {one_line(e)}") from e


def no_example_input_for_a_file() -> typer.BadParameter:
    return typer.BadParameter("--example-input needs a factory (package.module:callable), not a file")


def not_a_dotted_factory(spec: str) -> None:
    """Refuse ``mymodels.minigpt`` (no such file, and a dot where the factory's colon goes) with the fix."""
    hint = dotted_factory_hint(spec)
    if hint is not None:
        raise InputError(hint)


def model_or_path(spec: str, examples: Sequence[ExampleInput] | None) -> nn.Module | str:
    """A model for a factory spec; the path itself otherwise (a checkpoint or a signature JSON)."""
    if is_factory(spec):
        return model_from(spec, examples)[0]
    not_a_dotted_factory(spec)
    if examples:
        raise no_example_input_for_a_file()
    return spec


def dynamic_shapes(model: nn.Module, examples: Sequence[ExampleInput], batch: bool,
                   axes: Sequence[DynamicAxis]) -> dict[str, dict[int, str]] | None:
    """``save(dynamic_shapes=...)`` for ``--dynamic-batch`` (axis 0 of every input, named "batch") and
    ``--dynamic-axis NAME:DIM`` (NAME: the forward argument, or its position), keyed by argument name."""
    if not batch and not axes:
        return None
    import inspect

    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:len(examples)]
    shapes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names} if batch else {}
    for axis in axes:
        name, dim = axis.name, axis.dim
        arg = names[int(name)] if name.isdigit() and int(name) < len(names) else name
        if arg not in names:
            raise typer.BadParameter(f"{name}:{dim}: the model's inputs are {', '.join(names) or 'none'} "
                                     "(by name or position)", param_hint="--dynamic-axis")
        ndim = len(examples[names.index(arg)].shape)
        if dim >= ndim:
            raise typer.BadParameter(f"{name}:{dim}: input {arg} has {ndim} dimensions",
                                     param_hint="--dynamic-axis")
        shapes.setdefault(arg, {})[dim] = "batch" if dim == 0 and batch else f"{arg}_{dim}"
    return shapes
