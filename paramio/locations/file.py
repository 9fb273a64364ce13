"""One checkpoint file: a format's reader and writer behind the :class:`Source` / :class:`Sink` protocol.

The format modules know one file layout each and nothing about ties; here the facts they report become tie
groups (a ``.pt`` file's tensors sharing storage go through :func:`paramio.ties.plan_ties`, the same rule
that saving applies), and the writer is fed with checksums computed beside the writes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from ..atomic import Staging
from ..checksum import digest, placeholder, tensor_bytes
from ..errors import FormatError, InternalError, MissingFileError, ParamioError, TieError
from ..formats.base import FileContents, Reader, Writer
from ..formats.registry import by_name
from ..manifest import Manifest, TensorEntry
from ..ties import plan_ties
from .base import Location, Sink, Source, WriteResult

__all__ = ["FileSource", "FileSink", "with_checksum"]


class FileSource(Source):
    """A single file read through its format's reader."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        fmt = by_name(location.format)
        path = location.root
        if not path.exists():
            raise MissingFileError(path)
        if not path.is_file():
            raise FormatError(f"{path}: not a regular file")
        try:
            self._reader: Reader = fmt.reader(path)
        except ParamioError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, MemoryError, RecursionError) as e:
            raise FormatError(f"{path}: cannot read as {fmt.name}: {e}") from e

    def contents(self) -> FileContents:
        contents = self._reader.contents()
        if contents.memory is not None:
            contents = self._ties_from_memory(contents)
        return contents

    def _ties_from_memory(self, contents: FileContents) -> FileContents:
        """Ties of a file whose tensors are already in memory (``.pt``): names over the same view of one storage
        are links to the first; other overlaps are views, which only a paramio manifest can describe."""
        memory = contents.memory or {}
        try:
            plan = plan_ties(list(memory.items()))
        except TieError as e:
            raise FormatError(f"{self.path}: {e}") from e
        if plan.views and contents.manifest_json is None:
            views = ", ".join(f"`{v.name}` (a view of `{v.base}`)" for v in plan.views)
            raise FormatError(
                f"{self.path}: {views} share memory without being the same tensor (partial aliases), which a file "
                "without a paramio manifest cannot describe; load it with torch.load and save it with "
                "paramio.save, which stores them as views"
            )
        by_name_ = {s.name: s for s in contents.stored}
        stored = tuple(by_name_[name] for name in plan.stored)
        links = {alias: group.canonical for group in plan.ties for alias in group.aliases
                 if group.canonical in by_name_ and group.canonical in plan.stored}
        return replace(contents, stored=stored, links={**contents.links, **links}, memory=None)

    def read(self, name: str) -> torch.Tensor:
        return self._reader.read(name)

    def graph(self) -> object | None:
        return self._reader.graph()

    def close(self) -> None:
        self._reader.close()


def with_checksum(entry: TensorEntry, checksum: str | None) -> TensorEntry:
    """``entry`` with another checksum. Checksums come from :func:`digest` or :func:`placeholder`, so they are
    valid by construction: a plain copy, not ``model_copy(update=...)``, which costs three times as much (it
    matters with tens of thousands of tensors)."""
    if entry.checksum == checksum:
        return entry
    new = object.__new__(type(entry))  # what pydantic's own __copy__ does, minus its generic dispatch
    _setattr(new, "__dict__", {**entry.__dict__, "checksum": checksum})
    fields = entry.__pydantic_fields_set__
    if "checksum" not in fields:  # else the set is already right, and shared (entries are frozen)
        fields = _with_checksum_field(frozenset(fields))
    _setattr(new, "__pydantic_fields_set__", fields)
    _setattr(new, "__pydantic_extra__", None)
    _setattr(new, "__pydantic_private__", None)
    return new


_setattr = object.__setattr__


@functools.lru_cache(maxsize=64)
def _with_checksum_field(fields: frozenset[str]) -> set[str]:
    """One shared "fields set" per combination (entries are frozen, and pydantic copies the set before it
    changes one): a set per entry cost 470 bytes, 9 MB for 20,000 tensors."""
    return set(fields | {"checksum"})


def _cores() -> int:
    """The cores this process may run on (its affinity, which containers set), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class FileSink(Sink):
    """One file through its format's writer. Checksums: for large tensors the hash runs in a second thread
    while the writer copies the same bytes to the file (xxhash and file writes both release the GIL), so it
    costs next to nothing; small ones are hashed in line, where a thread would cost more.

    A writer that keeps every tensor until ``finish`` (``.pt``, ``patches_checksums``) writes nothing
    meanwhile, so there is no write to overlap: its tensors are hashed on all cores while ``finish`` writes the
    file with placeholder checksums of the final length, and the checksums are patched in after.

    Why not hash first, then one ``torch.save`` with the final manifest (simpler, no zip patching)? Measured
    on the GPT-2 case (622 MiB, 2 cores): xxh3 costs 0.03 s of CPU against 0.35 s for ``torch.save`` (8%),
    and ``torch.save`` itself runs in 0.23 s on a quiet machine (benchmarks/README.md), where the .pt save
    without fsync is at 1.06x ``torch.save``. Hashing before the save would add that time in series
    (~+8-13%), past the 1.1x target; overlapped, it costs nothing measurable."""

    #: Below this many bytes a tensor is hashed in line.
    THREAD_MIN = 4 << 20
    #: For a writer that patches its checksums in: below this many bytes a tensor is hashed in line.
    DEFERRED_MIN = 256 << 10

    def __init__(self, location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
                 options: Mapping[str, Any]) -> None:
        super().__init__(location, staging, manifest, algorithm, options)
        mark = placeholder(algorithm) if algorithm else None
        self._draft = manifest.model_copy(update={"tensors": tuple(with_checksum(t, mark) for t in manifest.tensors)})
        self._sums: list[str | Future[str] | None] = []
        self._pool: ThreadPoolExecutor | None = None
        final = location.root
        fmt = by_name(location.format)
        self._writer: Writer = fmt.writer(staging.temp_for(final), final, staging, self._draft, options)

    def write(self, entry: TensorEntry, tensor: torch.Tensor) -> WriteResult:
        self._sums.append(self._write(entry, tensor))
        return WriteResult(entry.name, self.location.root.name, tensor.nbytes)

    def _write(self, entry: TensorEntry, tensor: torch.Tensor) -> str | Future[str] | None:
        writer = self._writer
        if self.algorithm is None:
            writer.write_tensor(entry, tensor)
            return None
        buffer = tensor_bytes(tensor)
        if writer.patches_checksums:
            writer.write_tensor(entry, tensor)
            if buffer.nbytes < self.DEFERRED_MIN:
                return digest(buffer, self.algorithm)
            return self._submit(buffer, _cores())  # the buffer keeps the tensor's memory alive
        if buffer.nbytes < self.THREAD_MIN:
            writer.write_tensor(entry, tensor)
            return digest(buffer, self.algorithm)
        future = self._submit(buffer, 1)
        try:
            writer.write_tensor(entry, tensor)
        finally:
            sum_ = future.result()  # never leave the thread reading a tensor that is about to be dropped
        return sum_

    def _submit(self, buffer: object, workers: int) -> Future[str]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="paramio-hash")
        return self._pool.submit(digest, buffer, self.algorithm)

    def finish(self) -> Manifest:
        if len(self._sums) != len(self._draft.tensors):
            raise InternalError(f"{len(self._sums)} tensors written, the manifest lists "
                              f"{len(self._draft.tensors)}")
        writer = self._writer
        if writer.patches_checksums:
            writer.finish(self._draft)  # while the hash threads finish
        final = self._draft.model_copy(update={"tensors": tuple(
            with_checksum(t, sum_.result() if isinstance(sum_, Future) else sum_)
            for t, sum_ in zip(self._draft.tensors, self._sums, strict=True))})
        if not writer.patches_checksums:
            writer.finish(final)
        elif self.algorithm is not None:
            writer.patch(final)
        self._close_pool()
        return final

    def _close_pool(self) -> None:
        if self._pool is not None:  # after a failure, the hashes still queued are not worth waiting for
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        self._close_pool()
        self._writer.abort()
