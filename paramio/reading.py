"""Opening checkpoint files: the format by suffix, the manifest (stored or derived), and tensors with
identity restored."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydantic
import torch

from ._gc import paused_gc
from .checksum import algorithm_of, digest, tensor_bytes
from .checkpoint import Checkpoint
from .dtypes import DTYPES, torch_dtype
from .errors import FormatError, MissingFileError, ParamioError
from .formats.base import FileContents, Reader
from .formats.registry import for_path
from .manifest import GRAD_PREFIX, Manifest, Producer, TensorEntry, TieGroup

__all__ = ["open_file", "manifest_of", "file_problems", "read_manifest", "load", "read_verified", "MAX_TENSORS",
           "MAX_MANIFEST_BYTES"]

#: Stored tensors one file may hold: far above real models (tens of thousands), far below what describing
#: them would cost in memory.
MAX_TENSORS = 1_000_000
#: A paramio manifest longer than this is refused before it is parsed (the safetensors header cap).
MAX_MANIFEST_BYTES = 100_000_000
#: Tensors of at least this many bytes are verified in worker threads; smaller ones cost less in line.
_THREAD_MIN = 1 << 20


def _pydantic_summary(e: pydantic.ValidationError, limit: int = 3) -> str:
    parts = []
    for err in e.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = e.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@contextlib.contextmanager
def open_file(path: str | Path, format: str | None = None) -> Iterator[Reader]:
    """A reader for ``path``; every failure to open is a :class:`FormatError` naming the file."""
    path = Path(path)
    fmt = for_path(path, format)
    if not path.exists():
        raise MissingFileError(path)
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file")
    try:
        reader = fmt.reader(path)
    except ParamioError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, MemoryError, RecursionError) as e:
        raise FormatError(f"{path}: cannot read as {fmt.name}: {e}") from e
    try:
        yield reader
    finally:
        reader.close()


def _derive(contents: FileContents) -> Manifest:
    """A manifest for a file another tool wrote: its stored tensors, and its links as tie groups."""
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


def file_problems(contents: FileContents, manifest: Manifest) -> list[str]:
    """Where the file's own structure disagrees with its manifest."""
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


def manifest_of(reader: Reader, *, check: bool = True) -> Manifest:
    """The file's paramio manifest, checked against the file, or one derived from the file."""
    contents = reader.contents()
    if len(contents.stored) > MAX_TENSORS:
        raise FormatError(f"{reader.path}: {len(contents.stored)} tensors, more than the cap of {MAX_TENSORS}")
    if contents.manifest_json is not None and len(contents.manifest_json) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{reader.path}: a {len(contents.manifest_json)}-character manifest, more than the cap "
                          f"of {MAX_MANIFEST_BYTES}")
    if contents.manifest_json is None:
        try:
            return _derive(contents)
        except pydantic.ValidationError as e:
            raise FormatError(f"{reader.path}: cannot describe the file's tensors: {_pydantic_summary(e)}") from e
    try:
        manifest = Manifest.from_json(contents.manifest_json)
    except pydantic.ValidationError as e:
        raise FormatError(f"{reader.path}: invalid paramio manifest: {_pydantic_summary(e)}") from e
    if check:
        problems = file_problems(contents, manifest)
        if problems:
            raise FormatError(f"{reader.path}: file and manifest disagree: {'; '.join(problems[:3])}")
    return manifest


@paused_gc
def read_manifest(path: str | Path, *, format: str | None = None) -> Manifest:
    """The manifest of a checkpoint file, reading no tensor data."""
    with open_file(path, format) as reader:
        return manifest_of(reader)


def read_verified(reader: Reader, entry: TensorEntry, verify: bool) -> torch.Tensor:
    """One stored tensor, checked against its manifest entry (and checksum when ``verify``)."""
    try:
        tensor = reader.read(entry.name)
    except ParamioError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, MemoryError) as e:
        raise FormatError(f"{reader.path}: tensor `{entry.name}`: cannot read: {e}") from e
    if tensor.dtype != DTYPES[entry.dtype] or tensor.shape != entry.shape:
        raise FormatError(f"{reader.path}: tensor `{entry.name}`: data does not match its manifest entry")
    if verify and entry.checksum is not None:
        actual = digest(tensor_bytes(tensor), algorithm_of(entry.checksum))
        if actual != entry.checksum:
            raise _mismatch(reader.path, entry.name)
    return tensor


def _mismatch(path: Path, name: str) -> FormatError:
    return FormatError(f"{path}: tensor `{name}`: checksum mismatch (file corrupt or modified); "
                       "load with verify=False to read it anyway")


def _verify_all(path: Path, entries: Sequence[TensorEntry], tensors: Sequence[torch.Tensor]) -> None:
    """Check every checksum; large tensors are hashed on all cores (the hash releases the GIL, and on a
    mapped file it is also what reads the pages), largest first so that the threads finish together."""
    sums: dict[int, str] = {}
    big = sorted((i for i, e in enumerate(entries) if e.checksum is not None and tensors[i].nbytes >= _THREAD_MIN),
                 key=lambda i: -tensors[i].nbytes)
    workers = min(4, os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        futures = {}
        if len(big) > 1 and workers > 1:
            pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="paramio-verify"))
            futures = {i: pool.submit(digest, tensor_bytes(tensors[i]), algorithm_of(entries[i].checksum))
                       for i in big}
        for i, entry in enumerate(entries):
            if entry.checksum is not None and i not in futures:
                sums[i] = digest(tensor_bytes(tensors[i]), algorithm_of(entry.checksum))
        sums.update((i, f.result()) for i, f in futures.items())
    for i, entry in enumerate(entries):  # the first mismatch in file order, whichever thread found it
        if entry.checksum is not None and sums[i] != entry.checksum:
            raise _mismatch(path, entry.name)


@paused_gc
def load(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
         format: str | None = None) -> Checkpoint:
    """Every name in the file; aliases are the very same tensor object as their canonical."""
    target = torch.device(device)
    with open_file(path, format) as reader:
        manifest = manifest_of(reader)
        stored = [read_verified(reader, entry, False) for entry in manifest.tensors]
        if verify:
            _verify_all(reader.path, manifest.tensors, stored)
        tensors: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}
        for entry, tensor in zip(manifest.tensors, stored):
            if tensor.device != target:
                tensor = tensor.to(target)
            if entry.kind == "gradient":
                grads[entry.name[len(GRAD_PREFIX):]] = tensor
            else:
                tensors[entry.name] = tensor
        del stored
    for view in manifest.views:
        base = tensors[view.base]
        tensors[view.name] = base.as_strided(view.shape, view.stride, base.storage_offset() + view.offset)
    for group in manifest.ties:
        for alias in group.aliases:
            tensors[alias] = tensors[group.canonical]
    return Checkpoint(tensors, manifest, grads)
