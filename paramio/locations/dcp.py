"""A DCP folder (``torch.distributed.checkpoint``) opened for reading.

Each tensor is stitched from its chunks (one per rank that held a shard), each chunk read from its own byte
range of a data file: one ``torch.save`` record, loaded with ``weights_only=True``. Only the tensor being
read is in memory. ``.metadata`` is read through the allowlist of :mod:`.dcp_metadata`, never plain pickle.

Stock folders get a derived manifest without ties (stock DCP stores a tie as two copies; ``load_into``
restores the model's ties from equal copies). A folder paramio wrote carries its manifest (ties, checksums,
producer) in the metadata's planner data, and its aliases' storage records point at the canonical's bytes;
tensors stored in several chunks carry a checksum per chunk, verified as the chunks are read.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import torch

from ..checksum import algorithm_of, digest, tensor_bytes
from ..dtypes import torch_dtype
from ..errors import FormatError
from ..formats.base import SKIPPED_KEY, FileContents, StoredTensor
from ..manifest import TensorEntry
from .base import Location, Source
from .dcp_metadata import METADATA_NAME, Chunk, DCPTensor, Layout, read_layout

__all__ = ["METADATA_NAME", "DCPSource", "chunk_key", "chunk_rows", "is_dcp_folder"]


def is_dcp_folder(path: Path) -> bool:
    """Whether ``path`` is a DCP folder (it holds ``.metadata``)."""
    return path.is_dir() and (path / METADATA_NAME).is_file()


def chunk_key(offsets: tuple[int, ...]) -> str:
    """How paramio's chunk checksum table names a chunk: its offsets, comma-separated."""
    return ",".join(map(str, offsets))


_RANK = re.compile(r"__(\d+)_")


def chunk_rows(folder: Path) -> list[dict[str, object]]:
    """Per stored tensor of a DCP folder: its chunks (offsets, sizes, data file) and the ranks that wrote
    them (from the data file names ``__<rank>_<n>.distcp``), for ``paramio inspect``."""
    rows = []
    for tensor in read_layout(folder).tensors:
        chunks = [{"offsets": list(c.offsets), "sizes": list(c.sizes), "file": c.file} for c in tensor.chunks]
        ranks = sorted({int(m.group(1)) for c in tensor.chunks if (m := _RANK.match(c.file))})
        rows.append({"name": tensor.name, "chunks": chunks, "ranks": ranks})
    return rows


class _RangeReader(io.RawIOBase):
    """One byte range of an open file as a file of its own (what ``torch.load`` reads a record from)."""

    def __init__(self, fh: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._fh, self._start, self._length, self._pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._length - self._pos)
        if count <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(view[:count]) or 0
        self._pos += got
        return got


class DCPSource(Source):
    """A DCP folder: ``.metadata`` (checked) and the data files its chunks point into."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self.layout: Layout = read_layout(location.root)
        self._tensors: dict[str, DCPTensor] = {t.name: t for t in self.layout.tensors}
        self._files: dict[str, io.BufferedReader] = {}

    # -- Source ------------------------------------------------------------------------------------------
    def contents(self) -> FileContents:
        stored = tuple(StoredTensor(t.name, t.dtype, t.shape) for t in self.layout.tensors)
        metadata = {SKIPPED_KEY: json.dumps(list(self.layout.skipped))} if self.layout.skipped else {}
        if self.layout.manifest_json is not None:
            stored = self._stored_per_manifest(stored)
        return FileContents(producer="torch.distributed.checkpoint", stored=stored, metadata=metadata,
                            manifest_json=self.layout.manifest_json)

    def _stored_per_manifest(self, stored: tuple[StoredTensor, ...]) -> tuple[StoredTensor, ...]:
        """A paramio-written folder lists its aliases and views too (so that stock ``dcp.load`` fills them);
        they are names over a stored tensor's bytes, not stored tensors."""
        try:
            manifest = json.loads(self.layout.manifest_json or "{}")
            names = {a for g in manifest.get("ties", ()) for a in g.get("aliases", ())}
            names |= {v.get("name") for v in manifest.get("views", ())}
        except (ValueError, AttributeError, TypeError):
            return stored  # the manifest check reports it
        return tuple(s for s in stored if s.name not in names)

    def file_of(self, name: str) -> str:
        tensor = self._tensors.get(name)
        return tensor.chunks[0].file if tensor is not None and tensor.chunks else METADATA_NAME

    def read(self, name: str) -> torch.Tensor:
        return self._stitch(self._tensors[name], verify=False)

    def read_entry(self, entry: TensorEntry, *, verify: bool) -> torch.Tensor:
        """As :meth:`Source.read_entry`, with each chunk's checksum verified (when paramio recorded them)."""
        if verify and entry.name in self.layout.chunk_sums and entry.name in self._tensors:
            self._verify_next = entry.name
        try:
            return super().read_entry(entry, verify=verify)
        finally:
            self._verify_next = None

    _verify_next: str | None = None

    def location_problems(self) -> list[str]:
        """Data files that ``.metadata`` does not name (an interrupted save leaves them; ``load`` ignores
        them)."""
        from .dcp_sink import DATA_FILE

        try:
            names = sorted(p.name for p in self.location.root.iterdir() if DATA_FILE.fullmatch(p.name))
        except OSError:
            return []
        return [f"{self.location.root / n}: a data file that {METADATA_NAME} does not name (left by an interrupted "
                "save?); load ignores it" for n in names if n not in self.layout.files]

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    # -- chunks ------------------------------------------------------------------------------------------
    def _stitch(self, tensor: DCPTensor, *, verify: bool) -> torch.Tensor:
        verify = verify or self._verify_next == tensor.name
        chunks = [c for c in tensor.chunks if all(c.sizes)] or list(tensor.chunks[:1])
        if len(chunks) == 1 and chunks[0].sizes == tensor.shape:
            return self._chunk(tensor, chunks[0], verify)
        out = torch.empty(tensor.shape, dtype=torch_dtype(tensor.dtype))
        for chunk in chunks:
            piece = self._chunk(tensor, chunk, verify)
            region = out
            for dim, (o, s) in enumerate(zip(chunk.offsets, chunk.sizes)):
                region = region.narrow(dim, o, s)
            region.copy_(piece)
            del piece
        return out

    def _chunk(self, tensor: DCPTensor, chunk: Chunk, verify: bool) -> torch.Tensor:
        """One chunk's tensor, read from its byte range only and checked against the metadata."""
        where = f"{self.location.root / chunk.file}: chunk of `{tensor.name}` at {list(chunk.offsets)}"
        fh = self._open(chunk.file)
        fh.seek(chunk.offset)
        if fh.read(4) != b"PK\x03\x04":  # every torch.save record is a zip archive
            raise FormatError(f"{where} (bytes {chunk.offset}+{chunk.length}): not a torch.save record (DCP's "
                              "serialization_format=SAFETENSORS and stream transforms are not read)")
        try:
            value = torch.load(_RangeReader(fh, chunk.offset, chunk.length), map_location="cpu", weights_only=True)
        except (RuntimeError, ValueError, EOFError, OSError, KeyError, TypeError, IndexError, AttributeError,
                MemoryError, OverflowError, ImportError, pickle.UnpicklingError) as e:
            raise FormatError(f"{where} (bytes {chunk.offset}+{chunk.length}): not a torch.save record of a tensor: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"{where}: the record holds a {type(value).__name__}, not a tensor")
        if value.dtype != torch_dtype(tensor.dtype) or tuple(value.shape) != chunk.sizes:
            raise FormatError(f"{where}: the record holds a {value.dtype} tensor of shape {list(value.shape)}, the "
                              f"metadata says {tensor.dtype}{list(chunk.sizes)}")
        value = value.detach().contiguous()
        if verify:
            expected = self.layout.chunk_sums.get(tensor.name, {}).get(chunk_key(chunk.offsets))
            if expected is not None and digest(tensor_bytes(value), algorithm_of(expected)) != expected:
                raise FormatError(f"{where}: checksum mismatch (file corrupt or modified); load with "
                                  "verify=False to read it anyway")
        return value

    def _open(self, rel: str) -> io.BufferedReader:
        fh = self._files.get(rel)
        if fh is None:
            try:
                fh = open(self.location.root / rel, "rb")  # noqa: SIM115 - kept open until close()
            except OSError as e:
                raise FormatError(f"{self.location.root / rel}: cannot open: {e.strerror or e}") from e
            self._files[rel] = fh
        return fh
