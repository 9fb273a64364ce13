"""Formats by name and by file suffix. The table is fixed at import: no mutable global registry."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FormatError

if TYPE_CHECKING:  # the table and its lookups load without torch (paramio --help)
    from .base import Format

__all__ = ["FORMATS", "SUFFIXES", "SUFFIX", "by_name", "for_path"]

#: format name -> "module:class"; imported on first use so that e.g. onnx loads only when needed.
FORMATS: dict[str, str] = {
    "safetensors": "paramio.formats.safetensors:SafetensorsFormat",
    "hdf5": "paramio.formats.hdf5:HDF5Format",
    "onnx": "paramio.formats.onnx:ONNXFormat",
    "torch": "paramio.formats.torch:TorchFormat",
}
SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".onnx": "onnx",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
}
#: format name -> the suffix paramio writes by default (the first one listed for it above).
SUFFIX: dict[str, str] = {name: next(s for s, f in SUFFIXES.items() if f == name) for name in FORMATS}
_ALIASES = {"h5": "hdf5", "pt": "torch", "pth": "torch", "st": "safetensors"}


def by_name(name: str) -> type[Format]:
    """The format class for a name such as ``"hdf5"`` (or ``"h5"``, ``"pt"``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    module_name, _, class_name = FORMATS[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise FormatError(f"format {key!r} is not available: {e}") from e
    return getattr(module, class_name)


def for_path(path: str | Path, format: str | None = None) -> type[Format]:
    """The format for a path: the explicit ``format`` if given, else the suffix."""
    if format is not None:
        return by_name(format)
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        known = " ".join(SUFFIXES)
        close = difflib.get_close_matches(suffix, SUFFIXES, n=1, cutoff=0.75) if suffix else []
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise FormatError(f"{path}: unknown suffix {suffix or '(none)'!r}{guess}; use one of {known} or pass format=")
    return by_name(SUFFIXES[suffix])
