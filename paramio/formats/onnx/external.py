"""External data files: one beside the model, named after its content (``<model>.<16 hex>.data``), so that
renaming the model is the one commit point of a save; after the commit, data files bearing this name for this
model that the model now there does not use are removed.

Concurrent saves of one model: each holds an exclusive ``flock`` on the folder from its renames to the end of
its cleanup (:func:`folder_lock`), so no other save commits between a cleanup reading the model now in place
and removing what that model does not use (without it, a concurrent save of the previous content could put
its model in place in that gap and lose its data file). Another save's data file is still under its temporary
name until that save holds the lock, so the cleanup never takes it for an unused one. Readers take no lock;
a reader that finds a data file gone while the model was replaced under it reads the new version (see the
reader)."""

from __future__ import annotations

import hashlib
import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KEY_HEX", "data_name", "data_pattern", "data_files", "own_data_files", "remove_unused", "folder_lock"]

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


def remove_unused(model: Path, keep: set[Path]) -> None:
    """After a save of ``model`` (under :func:`folder_lock`): remove the data files bearing paramio's name for
    this model that the model now there does not use; ``keep`` (this save's own) are known to be used, so a
    folder holding nothing else needs no read of the model."""
    folder, pattern = model.parent.resolve(), data_pattern(model.name)
    try:
        with os.scandir(folder) as entries:
            own = {folder / e.name for e in entries if pattern.fullmatch(e.name)}
    except OSError:
        return
    if not own - keep:
        return
    current = data_files(model)
    if current is None:  # a model that does not read: remove nothing
        return
    for file in own - current - keep:
        file.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` (advisory: paramio's ONNX saves take it around their commit and
    cleanup); where the folder cannot be locked (a file system without flock), nothing is held."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
