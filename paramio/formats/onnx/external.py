"""External data files: one beside the model, named after its content (``<model>.<16 hex>.data``), so that
renaming the model is the one commit point of a save; after the commit, the previous version's data file is
removed when the new model does not use it (only files bearing this name for this model)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["KEY_HEX", "data_name", "data_pattern", "data_files", "own_data_files", "remove_unused"]

#: Hex digits of the content hash in an external data file's name.
KEY_HEX = 16


#: File name bytes most file systems allow (NAME_MAX).
_NAME_MAX = 255


def _base(model: str) -> str:
    """The model's name as the start of its data file's name: itself, or for a name so long that the data
    file's would pass NAME_MAX, its start and a hash of the whole (the same model name, the same base)."""
    room = _NAME_MAX - len(f".{'0' * KEY_HEX}.data")
    encoded = model.encode("utf-8", "surrogateescape")
    if len(encoded) <= room:
        return model
    digest = hashlib.blake2s(encoded, digest_size=8).hexdigest()
    return encoded[: room - len(digest) - 1].decode("utf-8", "ignore") + "~" + digest


def data_name(model: str, key: str) -> str:
    """The external data file name of model file ``model`` for content hash ``key``."""
    return f"{_base(model)}.{key}.data"


def data_pattern(model: str) -> re.Pattern[str]:
    """paramio's own external data file names for ``model``: the only files a save ever removes."""
    return re.compile(rf"{re.escape(_base(model))}\.[0-9a-f]{{{KEY_HEX}}}\.data")


def data_files(model: Path) -> set[Path] | None:
    """The external data files (resolved) that the ONNX model at ``model`` reads: empty for no file, None
    for a file that does not read (a save then removes nothing)."""
    if not model.is_file():
        return set()
    from .reader import ONNXReader  # the reader imports nothing of the writing side

    try:
        with ONNXReader(model) as reader:
            return {init.external[0] for init in reader._inits.values() if init.external is not None}
    except Exception:  # noqa: BLE001 - best effort: whatever file the previous save left, or a foreign one
        return None


def own_data_files(model: Path) -> bool:
    """Whether the model's folder holds any data file bearing paramio's name for ``model``."""
    pattern = data_pattern(model.name)
    try:
        with os.scandir(model.parent) as entries:
            return any(pattern.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def remove_unused(model: Path, previous: set[Path]) -> None:
    """After a save of ``model``: remove the data files the previous version used that the model now there
    (this save's, or a concurrent one's) does not, if they bear paramio's name for this model."""
    current = data_files(model)
    if current is None:
        return
    folder, pattern = model.parent.resolve(), data_pattern(model.name)
    for file in previous - current:
        if file.parent == folder and pattern.fullmatch(file.name):
            file.unlink(missing_ok=True)
