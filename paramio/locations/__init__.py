"""What a path names, and the one place that opens it: every verb reads through :func:`open_source` and
writes through :func:`open_sink`, whatever the location (see :mod:`paramio.locations.base`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import Staging
from ..errors import FormatError, MissingFileError
from ..formats.registry import for_path
from ..manifest import Manifest
from .base import Location, Sink, Source, WriteResult
from .dcp import METADATA_NAME, DCPSource, is_dcp_folder
from .file import FileSink, FileSource
from .sharded import INDEX_SUFFIX, ShardedSink, ShardedSource, folder_output, locate_folder, locate_index

__all__ = ["Location", "Source", "Sink", "WriteResult", "locate", "locate_output", "open_source", "open_sink"]


def locate(path: str | Path, format: str | None = None) -> Location:
    """The location an existing path names, for reading."""
    path = Path(path)
    if path.name == METADATA_NAME or is_dcp_folder(path):
        root = path.parent if path.name == METADATA_NAME else path
        return Location(path, "dcp", "dcp", root)
    if path.is_dir():
        return locate_folder(path, format)
    if not path.suffix and not path.exists():  # a folder that is not there (a DCP or sharded checkpoint)
        raise MissingFileError(path)
    if path.name.endswith(INDEX_SUFFIX):
        return locate_index(path, format)
    fmt = for_path(path, format)
    return Location(path, "file", fmt.name, path)


def locate_output(path: str | Path, format: str | None = None, *, max_shard_size: int | str | None = None
                  ) -> Location:
    """The location a path names, for writing: a sharded folder for a folder (a trailing separator, an
    existing folder), an index path, or a path without a suffix given ``max_shard_size``; else one file."""
    text = os.fspath(path)
    path = Path(text)
    if format == "dcp" or (format is None and is_dcp_folder(path)):
        if max_shard_size is not None:
            raise FormatError(f"{path}: a DCP folder is not split by size (its chunks are the ranks' shards); "
                              "drop max_shard_size")
        return Location(path, "dcp", "dcp", path.parent if path.name == METADATA_NAME else path)
    folder = text.endswith(("/", os.sep)) or path.is_dir() or (max_shard_size is not None and not path.suffix)
    if folder or path.name.endswith(INDEX_SUFFIX):
        return folder_output(path, format)
    if max_shard_size is not None:
        raise FormatError(f"{path}: max_shard_size writes a sharded folder (safetensors or torch); give a folder "
                          f"(out/) or an index path (out/model.safetensors.index.json), or drop max_shard_size")
    fmt = for_path(path, format)
    return Location(path, "file", fmt.name, path)


def open_source(path: str | Path | Location, format: str | None = None) -> Source:
    """A :class:`Source` for ``path``; every failure to open is a :class:`FormatError` naming it."""
    location = path if isinstance(path, Location) else locate(path, format)
    if location.kind == "dcp":
        return DCPSource(location)
    if location.kind == "sharded":
        return ShardedSource(location)
    return FileSource(location)


def open_sink(location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
              options: Mapping[str, Any]) -> Sink:
    """A :class:`Sink` writing ``manifest``'s tensors to ``location``, its files staged in ``staging``."""
    if location.kind == "dcp":
        from .dcp_sink import DCPSink

        return DCPSink(location, staging, manifest, algorithm, options)
    if location.kind == "sharded":
        return ShardedSink(location, staging, manifest, algorithm, options)
    return FileSink(location, staging, manifest, algorithm, options)
