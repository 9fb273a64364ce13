"""What the core reads from and writes to, whatever a path names.

A :class:`Source` is a location opened for reading: what it stores (its *contents*: names, dtypes, shapes,
the links its files record, the manifest text), the manifest (the stored one checked against the contents,
or one derived from them), and lazy per-tensor reads that name the file each tensor comes from. A
:class:`Sink` is a location opened for writing: tensors one at a time in the manifest's order, each write
answering where the tensor went (:class:`WriteResult`, as DCP's storage writers do), then ``finish`` records
the manifest with its checksums. Every file a sink writes is staged (:class:`paramio.atomic.Staging`) and
committed by the caller together, the index or metadata last.

Order of calls, reading::

    with open_source(path) as source:
        manifest = source.manifest()               # raises when the files disagree with it
        tensor = source.read_entry(entry, verify=True)

Writing::

    with staged(durable) as staging:
        sink = open_sink(location, staging, manifest, algorithm, options)
        for entry, tensor in ...:                  # manifest order; contiguous CPU tensors of the entry's dtype
            sink.write(entry, tensor)
        final = sink.finish()                      # the manifest with checksums, as recorded
        # on any exception: sink.abort(); staging removes the temporary files
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import torch

from .. import limits
from ..atomic import Staging
from ..checksum import algorithm_of, digest, tensor_bytes
from ..dtypes import DTYPES, torch_dtype
from ..errors import FormatError, ParamioError
from ..formats.base import FileContents
from ..manifest import GRAD_PREFIX, Manifest, Producer, TensorEntry, TieGroup

__all__ = ["Location", "Source", "Sink", "WriteResult", "derive_manifest", "contents_problems",
           "pydantic_summary", "checksum_mismatch"]


@dataclass(frozen=True)
class Location:
    """What a path names: ``kind`` is "file", "sharded" (an index and shard files) or "dcp"; ``format`` the
    format of its files ("safetensors", "torch", …, or "dcp"); ``root`` the file, or the folder; ``index``
    the index file of a sharded folder."""

    path: Path
    kind: str
    format: str
    root: Path
    index: Path | None = None

    def __str__(self) -> str:
        return str(self.path)


def pydantic_summary(e: pydantic.ValidationError, limit: int = 3) -> str:
    """The first few of pydantic's errors, in one line."""
    parts = []
    for err in e.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = e.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def checksum_mismatch(origin: str, name: str) -> FormatError:
    return FormatError(f"{origin}: tensor `{name}`: checksum mismatch (file corrupt or modified); "
                       "load with verify=False to read it anyway")


def derive_manifest(contents: FileContents) -> Manifest:
    """A manifest for files another tool wrote: the stored tensors, and the links as tie groups (canonical:
    the name the file stores)."""
    stored = {s.name for s in contents.stored}
    aliases: dict[str, list[str]] = {}
    for alias, target in contents.links.items():
        if target in stored and alias not in stored:
            aliases.setdefault(target, []).append(alias)
    entries = []
    for s in contents.stored:
        kind = s.kind or ("gradient" if s.name.startswith(GRAD_PREFIX) else "parameter")
        requires_grad = kind == "parameter" and torch_dtype(s.dtype).is_floating_point
        entries.append(TensorEntry(name=s.name, dtype=s.dtype, shape=s.shape, kind=kind, requires_grad=requires_grad))
    ties = tuple(TieGroup(canonical=c, aliases=tuple(a)) for c, a in aliases.items())
    return Manifest(producer=Producer(name=contents.producer), tensors=tuple(entries), ties=ties,
                    metadata=dict(contents.metadata))


def contents_problems(contents: FileContents, manifest: Manifest) -> list[str]:
    """Where what the files store disagrees with the manifest."""
    problems = []
    found = {s.name: s for s in contents.stored}
    for entry in manifest.tensors:
        s = found.pop(entry.name, None)
        if s is None:
            problems.append(f"tensor `{entry.name}`: in the manifest but not in the file")
        elif (s.dtype, s.shape) != (entry.dtype, entry.shape):
            problems.append(
                f"tensor `{entry.name}`: the file stores {s.dtype}{list(s.shape)}, the manifest says "
                f"{entry.dtype}{list(entry.shape)}"
            )
    problems += [f"tensor `{name}`: in the file but not in the manifest" for name in found]
    expected = manifest.alias_map()
    for alias, target in contents.links.items():
        if expected.get(alias, target) != target:
            problems.append(f"alias `{alias}`: the file links it to `{target}`, the manifest to `{expected[alias]}`")
    return problems


class Source(abc.ABC):
    """A location opened for reading. Subclasses report contents and read stored tensors; the manifest, its
    checks and checksum verification are the same for every location."""

    def __init__(self, location: Location) -> None:
        self.location = location

    @property
    def path(self) -> Path:
        return self.location.path

    # -- what a location implements -------------------------------------------------------------------
    @abc.abstractmethod
    def contents(self) -> FileContents:
        """What the location stores (names, dtypes, shapes, links, manifest text); reads no tensor data."""

    @abc.abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """One stored tensor, on the CPU, unverified (``read_entry`` checks it)."""

    def file_of(self, name: str) -> str:
        """The file a stored tensor is read from, relative to the location (for messages and ``inspect``)."""
        return self.location.root.name

    def origin(self, name: str) -> str:
        """Where a stored tensor comes from, as error messages name it: the file itself."""
        if self.location.kind == "file":
            return str(self.location.root)
        return str(self.location.root / self.file_of(name))

    def location_problems(self) -> list[str]:
        """Problems of the location beyond its manifest (a shard the index does not list)."""
        return []

    def graph(self) -> object | None:
        """A computation graph the location holds beside its tensors (an ONNX model's), as its format's writer
        takes it (option ``graph``); None when there is none."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the files."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared -------------------------------------------------------------------------------------
    @functools.cached_property
    def _contents(self) -> FileContents:
        contents = self.contents()
        if len(contents.stored) > limits.MAX_TENSORS:
            raise FormatError(f"{self.path}: {len(contents.stored)} tensors, more than the cap of "
                              f"{limits.MAX_TENSORS}")
        return contents

    @functools.cached_property
    def _parsed(self) -> Manifest:
        contents = self._contents
        text = contents.manifest_json
        if text is None:
            try:
                return derive_manifest(contents)
            except pydantic.ValidationError as e:
                raise FormatError(f"{self.path}: cannot describe the file's tensors: {pydantic_summary(e)}") from e
        if len(text) > limits.MAX_MANIFEST_BYTES:
            raise FormatError(f"{self.path}: a {len(text)}-character manifest, more than the cap of "
                              f"{limits.MAX_MANIFEST_BYTES}")
        try:
            return Manifest.from_json(text)
        except pydantic.ValidationError as e:
            raise FormatError(f"{self.path}: invalid paramio manifest: {pydantic_summary(e)}") from e

    @property
    def has_manifest(self) -> bool:
        """Whether the location carries a paramio manifest (else it is derived from the files)."""
        return self._contents.manifest_json is not None

    def manifest(self, *, check: bool = True) -> Manifest:
        """The stored manifest, checked against the contents (``check``), or one derived from them."""
        manifest = self._parsed
        if check:
            problems = contents_problems(self._contents, manifest)
            if problems:
                raise FormatError(f"{self.path}: file and manifest disagree: {'; '.join(problems[:3])}")
        return manifest

    def problems(self) -> list[str]:
        """Every disagreement of the files with the manifest, and the location's own problems."""
        return contents_problems(self._contents, self._parsed) + self.location_problems()

    def stored_names(self) -> set[str]:
        return {s.name for s in self._contents.stored}

    def read_entry(self, entry: TensorEntry, *, verify: bool) -> torch.Tensor:
        """One stored tensor, checked against its manifest entry (and its checksum when ``verify``)."""
        try:
            tensor = self.read(entry.name)
        except ParamioError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, MemoryError) as e:
            raise FormatError(f"{self.origin(entry.name)}: tensor `{entry.name}`: cannot read: {e}") from e
        if tensor.dtype != DTYPES[entry.dtype] or tensor.shape != entry.shape:
            raise FormatError(f"{self.origin(entry.name)}: tensor `{entry.name}`: data does not match its manifest "
                              "entry")
        if verify and entry.checksum is not None:
            if digest(tensor_bytes(tensor), algorithm_of(entry.checksum)) != entry.checksum:
                raise checksum_mismatch(self.origin(entry.name), entry.name)
        return tensor


@dataclass(frozen=True)
class WriteResult:
    """Where one tensor went: the file (relative to the location) and its size in bytes."""

    name: str
    file: str
    nbytes: int


class Sink(abc.ABC):
    """A location opened for writing, with the manifest to record (checksums still empty) and the checksum
    algorithm (None: no checksums)."""

    def __init__(self, location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
                 options: Mapping[str, Any]) -> None:
        self.location = location
        self.staging = staging
        self.manifest = manifest
        self.algorithm = algorithm
        self.options = options

    @abc.abstractmethod
    def write(self, entry: TensorEntry, tensor: torch.Tensor) -> WriteResult:
        """Store one tensor (contiguous, on the CPU, of the entry's dtype and shape)."""

    @abc.abstractmethod
    def finish(self) -> Manifest:
        """Record the manifest with every tensor's checksum; return it. Files stay staged."""

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Close whatever is open; the staging removes the temporary files."""
