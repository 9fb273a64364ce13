"""A DCP folder written by one process, tensor by tensor (``paramio.save(obj, "ckpt/", format="dcp")``,
``convert model.safetensors ckpt/ --format dcp``): the layout stock ``dcp.save`` writes from one rank, so
stock ``dcp.load`` (to any world size) and ``dcp_to_torch_save`` read it.

Each stored tensor is one ``torch.save`` record in the data file, one chunk covering the whole tensor; each
alias is a metadata entry whose storage record points at its canonical's bytes. The manifest travels in the
metadata's ``planner_data``; ``.metadata`` is renamed into place last (:func:`paramio.dcp.commit_metadata`),
after the data file, which gets a new name when a previous checkpoint's files are in the folder.
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
from ..errors import TieError
from ..manifest import Manifest, TensorEntry
from .base import Location, Sink, WriteResult
from .file import with_checksum
from .dcp_metadata import METADATA_NAME, PLANNER_MANIFEST_KEY

__all__ = ["DCPSink", "remove_unused_data"]

_DATA_FILE = re.compile(r"__\d+_.*\.distcp")


def remove_unused_data(folder: Path, used: set[str]) -> None:
    """Remove the data files of an earlier checkpoint that the metadata now in place does not name."""
    for path in folder.iterdir():
        if _DATA_FILE.fullmatch(path.name) and path.name not in used:
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
        if manifest.views:
            names = ", ".join(f"`{v.name}` (a view of `{v.base}`)" for v in manifest.views)
            raise TieError(f"{location}: {names}: DCP folders cannot hold partial aliases; save them as separate "
                           "tensors (.clone()) or choose a format that keeps views (safetensors, .pt)")
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
        start = self._fh.tell()
        torch.save(tensor, _Appender(self._fh))
        self._records[entry.name] = (start, self._fh.tell() - start)
        self._sums[entry.name] = digest(tensor_bytes(tensor), self.algorithm) if self.algorithm else None
        return WriteResult(entry.name, self.data_name, tensor.nbytes)

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
        from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                           TensorProperties, TensorStorageMetadata)

        from ..dtypes import DTYPES

        entries, storage = {}, {}
        places = {t.name: (t, self._records[t.name]) for t in manifest.tensors}
        for group in manifest.ties:
            places.update({alias: places[group.canonical] for alias in group.aliases})
        order = [n for t in manifest.tensors for n in (t.name, *self._aliases(manifest, t.name))]
        for name in order:
            entry, (offset, length) = places[name]
            size = torch.Size(entry.shape)
            zeros = torch.Size([0] * len(entry.shape))
            entries[name] = TensorStorageMetadata(TensorProperties(dtype=DTYPES[entry.dtype]), size,
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
