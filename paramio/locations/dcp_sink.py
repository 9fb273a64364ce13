"""A DCP folder written by one process, tensor by tensor (``paramio.save(obj, "ckpt/", format="dcp")``,
``convert model.safetensors ckpt/ --format dcp``): the layout stock ``dcp.save`` writes from one rank, so
stock ``dcp.load`` (to any world size) and ``dcp_to_torch_save`` read it.

Each stored tensor is one ``torch.save`` record in the data file, one chunk covering the whole tensor; each
alias is a metadata entry whose storage record points at its canonical's bytes; a partial alias (a view) is
stored as the tensor it shows (stock DCP has no views) and recorded as a view in the manifest. The manifest
travels in the metadata's ``planner_data``; ``.metadata`` is staged first so that the staging renames it
last, after the data file, which gets a new name when a previous checkpoint's files are in the folder.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import Staging
from ..manifest import Manifest, TensorEntry
from ..ties import view_of
from .base import Location, Sink, WriteResult
from .dcp_metadata import METADATA_NAME, PLANNER_MANIFEST_KEY
from .file import with_checksum

__all__ = ["DATA_FILE", "DCPSink", "remove_unused_data"]

DATA_FILE = re.compile(r"__\d+_.*\.distcp")


def remove_unused_data(folder: Path, used: set[str]) -> None:
    """Remove the data files of an earlier checkpoint that the metadata now in place does not name."""
    for path in folder.iterdir():
        if DATA_FILE.fullmatch(path.name) and path.name not in used:
            with contextlib.suppress(OSError):
                path.unlink()


class _Appender(io.RawIOBase):
    """Write-only view of the data file: ``torch.save`` writes a self-contained record through it."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        super().__init__()
        self._fh = fh

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        return self._fh.write(data)


def _data_name(folder: Path) -> str:
    """``__0_0.distcp`` as stock DCP names it, or the first free ``__0_<n>.distcp`` over an old checkpoint."""
    n = 0
    while (folder / f"__0_{n}.distcp").exists():
        n += 1
    return f"__0_{n}.distcp"


class DCPSink(Sink):
    """One data file plus ``.metadata``, written from a single process."""

    def __init__(self, location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
                 options: Mapping[str, Any]) -> None:
        super().__init__(location, staging, manifest, algorithm, options)
        self.folder = location.root
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data_name = _data_name(self.folder)
        # Staged first, so committed last: the staging renames in reverse order, .metadata is the commit point.
        self._metadata_temp = staging.temp_for(self.folder / METADATA_NAME)
        self._temp = staging.temp_for(self.folder / self.data_name)
        self._fh = open(self._temp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._records: dict[str, tuple[int, int]] = {}
        self._sums: dict[str, str | None] = {}

    def write(self, entry: TensorEntry, tensor: torch.Tensor) -> WriteResult:
        from ..checksum import digest, tensor_bytes

        if tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()  # torch.save writes the whole storage: only the tensor's own bytes
        self._records[entry.name] = self._record(tensor)
        self._sums[entry.name] = digest(tensor_bytes(tensor), self.algorithm) if self.algorithm else None
        for view in (v for v in self.manifest.views if v.base == entry.name):
            # Stock DCP has no views: each is also stored as the tensor it shows, so that dcp.load fills it;
            # the manifest records it as a view, so that paramio rebuilds it over its base.
            self._records[view.name] = self._record(view_of(tensor, view).contiguous())
        return WriteResult(entry.name, self.data_name, tensor.nbytes)

    def _record(self, tensor: torch.Tensor) -> tuple[int, int]:
        """Append one ``torch.save`` record; its byte range in the data file."""
        start = self._fh.tell()
        torch.save(tensor, _Appender(self._fh))
        return start, self._fh.tell() - start

    def finish(self) -> Manifest:
        final = self.manifest.model_copy(update={"tensors": tuple(
            with_checksum(t, self._sums[t.name]) for t in self.manifest.tensors)})
        self.staging.sync(self._fh)
        self._fh.close()
        with open(self._metadata_temp, "wb") as fh:
            pickle.dump(self._metadata(final), fh)
            self.staging.sync(fh)
        folder, used = self.folder, {self.data_name}
        self.staging.after_commit(lambda: remove_unused_data(folder, used))
        return final

    def _metadata(self, manifest: Manifest) -> Any:
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            Metadata,
            MetadataIndex,
            TensorProperties,
            TensorStorageMetadata,
        )

        from ..dtypes import DTYPES

        entries, storage = {}, {}
        dtypes = {t.name: t.dtype for t in manifest.tensors}
        places = {t.name: (t.dtype, t.shape, self._records[t.name]) for t in manifest.tensors}
        places.update({v.name: (dtypes[v.base], v.shape, self._records[v.name]) for v in manifest.views})
        for group in manifest.ties:
            places.update({alias: places[group.canonical] for alias in group.aliases})
        stored = [t.name for t in manifest.tensors] + [v.name for v in manifest.views]
        order = [n for name in stored for n in (name, *self._aliases(manifest, name))]
        for name in order:
            dtype, shape, (offset, length) = places[name]
            size = torch.Size(shape)
            zeros = torch.Size([0] * len(shape))
            entries[name] = TensorStorageMetadata(TensorProperties(dtype=DTYPES[dtype]), size,
                                                  [ChunkStorageMetadata(offsets=zeros, sizes=size)])
            storage[MetadataIndex(name, zeros, 0)] = _StorageInfo(self.data_name, offset, length)
        return Metadata(entries, planner_data={PLANNER_MANIFEST_KEY: manifest.to_json()}, storage_data=storage,
                        version=CURRENT_DCP_VERSION)

    @staticmethod
    def _aliases(manifest: Manifest, name: str) -> tuple[str, ...]:
        return next((g.aliases for g in manifest.ties if g.canonical == name), ())

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
