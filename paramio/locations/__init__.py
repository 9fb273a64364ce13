"""What a path names, and the one place that opens it: every verb reads through :func:`open_source` and
writes through :func:`open_sink`, whatever the location (see :mod:`paramio.locations.base`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import Staging
from ..errors import FormatError
from ..formats.registry import for_path
from ..manifest import Manifest
from .base import Location, Sink, Source, WriteResult
from .file import FileSink, FileSource

__all__ = ["Location", "Source", "Sink", "WriteResult", "locate", "locate_output", "open_source", "open_sink"]


def locate(path: str | Path, format: str | None = None) -> Location:
    """The location an existing path names, for reading."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: a folder, not a checkpoint file")
    fmt = for_path(path, format)
    return Location(path, "file", fmt.name, path)


def locate_output(path: str | Path, format: str | None = None) -> Location:
    """The location a path names, for writing."""
    path = Path(path)
    fmt = for_path(path, format)
    return Location(path, "file", fmt.name, path)


def open_source(path: str | Path | Location, format: str | None = None) -> Source:
    """A :class:`Source` for ``path``; every failure to open is a :class:`FormatError` naming it."""
    location = path if isinstance(path, Location) else locate(path, format)
    return FileSource(location)


def open_sink(location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
              options: Mapping[str, Any]) -> Sink:
    """A :class:`Sink` writing ``manifest``'s tensors to ``location``, its files staged in ``staging``."""
    return FileSink(location, staging, manifest, algorithm, options)
