"""The reader/writer protocol every format implements.

A format module knows one file layout and nothing about ties: writers are told what to store (the
manifest, whose tie groups they record in the format's own way) and receive tensors one at a time; readers
report what the file stores, which names it links together, and the paramio manifest if there is one, and
read one tensor at a time. Deriving tie groups, checking checksums and rebuilding identity is the core's job.

Order of calls, writing::

    writer = Format.writer(temp_path, final_path, staging, draft_manifest, options)
    for entry in draft_manifest.tensors:
        writer.write_tensor(entry, tensor)    # contiguous CPU tensor of entry's dtype and shape
    writer.finish(final_manifest)             # same entries and order, real checksums
    # on any exception: writer.abort(); the core removes the temporary files

A writer with ``patches_checksums`` (one that writes nothing before ``finish``) is instead finished with the
draft, whose placeholder checksums have the final length, while the checksums are still being computed,
then given the final manifest to put in place::

    writer.finish(draft_manifest)
    writer.patch(final_manifest)              # same bytes except the checksums

Reading::

    with Format.reader(path) as reader:       # checks the header/structure, reads no tensor data
        contents = reader.contents()
        tensor = reader.read(name)            # one stored tensor
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..atomic import Staging
from ..manifest import Manifest, TensorEntry

__all__ = ["MANIFEST_KEY", "SKIPPED_KEY", "StoredTensor", "FileContents", "Reader", "Writer", "Format"]

#: Where every format keeps the paramio manifest (a metadata key, an attribute, a metadata_props entry).
MANIFEST_KEY = "paramio.manifest"
#: The metadata key under which readers list what a file held but paramio could not take (non-tensor leaves
#: of a training checkpoint, ONNX initializers of types without a torch dtype), as JSON.
SKIPPED_KEY = "paramio.skipped"


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the file stores it: its name (gradients as ``grad/<name>``), dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str | None = None  # only when the file itself says (e.g. ONNX constants); else the core decides


@dataclass(frozen=True)
class FileContents:
    """What a reader found, before any tensor data is read.

    ``links`` maps names the file links to a stored tensor (safetensors alias metadata, HDF5 hard links,
    ONNX initializers on one external byte range) to that stored name, in the file's own order; the core
    turns them into tie groups when the file has no paramio manifest. ``memory``: for a file whose tensors a
    stock loader has already put in memory (``.pt``), every name with its tensor; ``stored`` then lists every
    name, and the core finds which of them share storage (the same rule as saving), so no reader decides ties.
    """

    producer: str
    stored: tuple[StoredTensor, ...]
    links: Mapping[str, str] = field(default_factory=dict)
    manifest_json: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    memory: Mapping[str, torch.Tensor] | None = None


class Reader(abc.ABC):
    """Lazy access to one file. Opening checks the structure (bounds, sizes) before allocating."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @abc.abstractmethod
    def contents(self) -> FileContents:
        """Names, dtypes, shapes, links and manifest text; reads no tensor data."""

    @abc.abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """One stored tensor, on the CPU, with the dtype and shape ``contents`` reported."""

    def graph(self) -> Any:
        """What the file holds beyond its tensors that only this format's writer can carry, as that writer's
        ``graph`` option (an ONNX model's computation graph); None when there is nothing."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Writer(abc.ABC):
    """Writes one file from tensors given one at a time, in the draft manifest's order."""

    #: Whether the writer keeps every tensor it is given and writes nothing until ``finish`` (``torch.save``
    #: needs the whole dict), then puts the checksums in with ``patch``: the core hashes on all cores while
    #: ``finish`` writes, instead of before (see the order of calls above).
    patches_checksums: ClassVar[bool] = False

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        self.temp = temp
        self.final = final
        self.staging = staging
        self.draft = draft
        self.options = options

    @abc.abstractmethod
    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        """Store one tensor (contiguous, on the CPU, of the entry's dtype and shape)."""

    @abc.abstractmethod
    def finish(self, manifest: Manifest) -> None:
        """Record the final manifest (same tensors as the draft, with checksums) and close the file."""

    def patch(self, manifest: Manifest) -> None:
        """Replace the draft's placeholder checksums in the finished file with the manifest's (only for
        writers with ``patches_checksums``)."""
        raise NotImplementedError(f"{type(self).__name__} does not patch checksums")

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Close whatever is open; the core deletes the temporary files."""


class Format:
    """A file format: its name, suffixes, options, and its reader and writer classes."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    #: Options ``save`` accepts for this format beyond the common ones (e.g. ``example_inputs`` for ONNX).
    options: ClassVar[tuple[str, ...]] = ()
    reader_class: ClassVar[type[Reader]]
    writer_class: ClassVar[type[Writer]]

    @classmethod
    def reader(cls, path: Path) -> Reader:
        return cls.reader_class(path)

    @classmethod
    def writer(cls, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]
               ) -> Writer:
        return cls.writer_class(temp, final, staging, draft, options)
