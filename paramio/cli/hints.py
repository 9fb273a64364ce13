"""Fixes said in the terms of the command line.

The library's messages name the fix in Python (``pass format=``, ``load with verify=False``); here the same
fix is a flag of the command that ran, or, where that command has none, what to do instead. The other
hints recognise a user's mistake from what the library or torch reported: a dot where the factory's colon
goes, float example inputs for a model that takes token ids, a transformers model exporting its cache.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..formats.registry import SUFFIXES

if TYPE_CHECKING:
    from torch import nn

    from .options import ExampleInput

__all__ = ["in_cli_terms", "dotted_factory_hint", "integer_input_hint", "export_hint"]

#: (the library's Python fix, the flag that does it, the fix with that flag, the fix without it)
_PYTHON_FIXES = (
    ("pass format=", "--format", "pass --format", "rename the file"),
    ("load with verify=False to read it anyway", "--no-verify", "rerun with --no-verify to read it anyway",
     "`paramio validate` lists every damaged tensor"),
)


def in_cli_terms(message: str, flags: Collection[str]) -> str:
    """``message`` with each Python fix replaced by the flag of the command that ran (``flags``)."""
    for python, flag, with_flag, without in _PYTHON_FIXES:
        message = message.replace(python, with_flag if flag in flags else without)
    return message


def dotted_factory_hint(spec: str) -> str | None:
    """For ``mymodels.minigpt`` (a dot where the colon goes), what to type instead; None for anything
    that could be a file name."""
    if ":" in spec or "/" in spec or Path(spec).exists() or Path(spec).suffix.lower() in SUFFIXES:
        return None
    parts = spec.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None
    return (f"{spec}: no such file, and not a factory: name the callable after a colon, as in "
            f"{'.'.join(parts[:-1])}:{parts[-1]} (package.module:callable)")


_INDEX_ERROR = re.compile(r"\b(Long|Int)\b|indices|index|Embedding", re.IGNORECASE)


def integer_input_hint(model: nn.Module, examples: Sequence[ExampleInput], error: BaseException) -> str:
    """When float example inputs met a model that takes token ids: the ``--example-input`` to use."""
    floats = [e for e in examples if e.dtype.startswith(("float", "bfloat"))]
    if not floats or not _INDEX_ERROR.search(str(error)):
        return ""
    from torch import nn

    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), None)
    shape = floats[0].text.partition(":")[0]
    return (f"; the model takes integer ids: try --example-input {shape}:int64:{vocab or 'VOCAB'} "
            f"(ids in [0, {vocab or 'VOCAB'}){', its embedding size' if vocab else ''})")


def export_hint(model: object, error: BaseException) -> str:
    """When a transformers model failed the ONNX graph export on its key/value cache: how to turn it off."""
    config = getattr(model, "config", None)
    if "Cache" not in str(error) or not getattr(config, "use_cache", False):
        return ""
    return ("; the model returns its key/value cache (use_cache=True): make the factory set "
            "model.config.use_cache = False (or build it with use_cache=False) for a graph export")
