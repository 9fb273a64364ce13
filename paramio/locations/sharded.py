"""A sharded folder (the Hugging Face layout, see :mod:`paramio.sharding`) as one :class:`Source` or
:class:`Sink`: each shard is a :class:`FileSource` / :class:`FileSink` of its own, the index ties them together.

Reading checks the folder as a whole before any tensor is read: every shard name stays inside the folder,
every shard exists and holds exactly the tensors the index places in it, no tensor is in two shards, the
index's ``total_size`` is possible, and (paramio folders) each shard's own manifest agrees with the index's.

Writing commits the whole folder at once, the index being the commit point, in two steps so that the index
in place always names a complete set of shards, also when the new shards reuse the previous ones' names:

1. every shard is written under a temporary name, then renamed to a hidden name unique to this write, and
   an index naming the hidden shards replaces the previous index (the commit);
2. each hidden shard is hard-linked to its Hugging Face name (``model-00001-of-00003.safetensors``) and an
   index naming those replaces the first; the hidden names and the previous checkpoint's files that the new
   index does not list are removed.

A write killed before step 1's rename leaves the previous checkpoint as it was; killed later, the folder
holds the new one (under hidden or final names). The next write removes what a dead write left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import Staging, staged
from ..errors import FormatError, InternalError, ParamioError
from ..formats._mapped import ITEMSIZE
from ..formats.base import FileContents
from ..formats.registry import SUFFIXES, by_name
from ..manifest import Manifest, TensorEntry
from ..sharding import (DEFAULT_MAX_SHARD_SIZE, INDEX_SUFFIX, LAYOUTS, Layout, hidden_name, index_json,
                        parse_size, plan_shards, read_index, remove, shard_path, stale_files)
from .base import Location, Sink, Source, WriteResult
from .file import FileSink, FileSource, with_checksum

__all__ = ["ShardedSource", "ShardedSink", "locate_folder", "locate_index", "folder_output", "shard_manifest",
           "INDEX_SUFFIX"]

_FOLDER_NAMES = ", ".join(n for layout in LAYOUTS.values() for n in (layout.single, layout.index))


def _layout_format(name: str, format: str | None, path: Path) -> str:
    """The format of an index name (``model.safetensors.index.json``: safetensors), checked against ``format``."""
    stem = name[: -len(INDEX_SUFFIX)]
    found = SUFFIXES.get(Path(stem).suffix.lower())
    chosen = by_name(format).name if format is not None else found
    if chosen not in LAYOUTS or (found is not None and found != chosen):
        raise FormatError(f"{path}: a sharded folder's index is named <prefix>.safetensors.index.json or "
                          "<prefix>.bin.index.json (only safetensors and torch have a sharded layout)")
    return chosen


def locate_index(path: Path, format: str | None = None) -> Location:
    """The sharded folder an index file names."""
    fmt = _layout_format(path.name, format, path)
    return Location(path, "sharded", fmt, path.parent, path)


def locate_folder(path: Path, format: str | None = None) -> Location:
    """What a folder holds, looked for as transformers does: for each format (safetensors first), the single
    file, then the index."""
    if format is not None and by_name(format).name not in LAYOUTS:
        raise FormatError(f"{path}: a folder; format {format} has no folder layout (only safetensors and torch)")
    formats = [by_name(format).name] if format is not None else list(LAYOUTS)
    for fmt in formats:
        layout = LAYOUTS[fmt]
        if (path / layout.single).is_file():
            return Location(path, "file", fmt, path / layout.single)
        if (path / layout.index).is_file():
            return Location(path, "sharded", fmt, path, path / layout.index)
    indexes = sorted(p for p in path.glob(f"*{INDEX_SUFFIX}") if p.is_file())
    if len(indexes) == 1:
        return locate_index(indexes[0], format)
    found = f" ({len(indexes)} index files: pass one of them)" if indexes else ""
    raise FormatError(f"{path}: a folder without a checkpoint{found}; expected one of {_FOLDER_NAMES}")


def folder_output(path: Path, format: str | None = None) -> Location:
    """The sharded folder a path names for writing: the folder itself, or its index file."""
    if path.name.endswith(INDEX_SUFFIX):
        return locate_index(path, format)
    fmt = by_name(format or "safetensors").name
    if fmt not in LAYOUTS:
        raise FormatError(f"{path}: a folder; format {fmt} has no sharded folder layout (only safetensors and "
                          f"torch): write one file instead (e.g. {path.name or 'model'}.h5, without max_shard_size)")
    return Location(path, "sharded", fmt, path, path / LAYOUTS[fmt].index)


# -- reading ---------------------------------------------------------------------------------------------------


class ShardedSource(Source):
    """An index and its shards, each shard a :class:`FileSource` opened once and kept open (a shard replaced
    by name meanwhile does not mix into what is read)."""

    #: How often opening starts over when the index was replaced meanwhile (a save finishing as we open).
    RETRIES = 3

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        assert location.index is not None  # noqa: S101 - set by locate_* for every sharded location
        self._sources: dict[str, FileSource] = {}
        for attempt in range(self.RETRIES + 1):
            stamp = _stamp(location.index)
            opened = False
            try:
                self._open_all(location.index)
                opened = True
                self.manifest(check=True)  # shards of another checkpoint: replaced since the index was read?
                return
            except FormatError:
                if _stamp(location.index) != stamp and attempt < self.RETRIES:
                    self.close()
                    continue
                if opened:
                    return  # the folder itself disagrees: manifest() and problems() report it
                self.close()
                raise

    def _open_all(self, index: Path) -> None:
        """The index, then every shard it names, opened now: a save that replaces the folder afterwards
        (its clean-up removes the previous shards) does not change what this source reads."""
        self._index = read_index(index)
        self._files = {shard: shard_path(self.location.root, shard, index, self.location.format)
                       for shard in self._index.shards()}
        self._owner: dict[str, str] = dict(self._index.weight_map)
        for cached in ("_contents", "_parsed"):  # of an attempt before this one
            self.__dict__.pop(cached, None)
        for shard in self._files:
            self._shard(shard)

    def _shard(self, shard: str) -> FileSource:
        source = self._sources.get(shard)
        if source is None:
            path = self._files[shard]
            source = FileSource(Location(path, "file", self.location.format, path))
            self._sources[shard] = source
        return source

    def contents(self) -> FileContents:
        weight_map = self._index.weight_map
        found: dict[str, Any] = {}
        links: dict[str, str] = {}
        producer = "safetensors"
        for shard, path in self._files.items():
            contents = self._shard(shard)._contents
            producer = contents.producer
            for stored in contents.stored:
                if stored.name in found:
                    raise FormatError(f"{path}: tensor `{stored.name}` is also in shard {self._owner_of(stored.name)}"
                                      "; a tensor may be in one shard only")
                placed = weight_map.get(stored.name)
                if placed != shard:
                    where = f"places it in {placed}" if placed else "does not list it"
                    raise FormatError(f"{path}: the shard holds tensor `{stored.name}`, the index {where}")
                found[stored.name] = stored
            for alias, target in contents.links.items():
                links.setdefault(alias, target)
                self._owner.setdefault(alias, shard)
        for name, shard in weight_map.items():
            if name not in found and name not in links:
                raise FormatError(f"{self._files[shard]}: the index places tensor `{name}` in this shard, which "
                                  "does not hold it")
        for alias, target in self._index.links.items():
            if alias not in found and target in found:
                links.setdefault(alias, target)
        self._check_total_size(found.values())
        return FileContents(producer=producer, stored=tuple(found[n] for n in weight_map if n in found),
                            links=links, manifest_json=self._index.manifest_json, metadata=self._index.metadata)

    def _owner_of(self, name: str) -> str:
        return next(s for s, src in self._sources.items() if any(t.name == name for t in src._contents.stored))

    def _check_total_size(self, stored: Any) -> None:
        total = self._index.total_size
        if total is None:
            return
        data = sum(_nbytes(s.dtype, s.shape) for s in stored)
        try:
            files = sum(os.path.getsize(p) for p in self._files.values())
        except OSError as e:  # a save's clean-up removed a shard since it was opened: opening starts over
            raise FormatError(f"{e.filename}: shard gone while the folder was opened ({e.strerror}); a save "
                              "replaced the folder meanwhile") from e
        if not data <= total <= files:
            raise FormatError(f"{self.location.index}: total_size {total} is false: the shards hold {data} bytes "
                              f"of tensors in {files} bytes of files")

    def manifest(self, *, check: bool = True) -> Manifest:
        manifest = super().manifest(check=check)
        if check:
            problems = self._shard_problems(manifest)
            if problems:
                raise FormatError(problems[0])
        return manifest

    def _shard_problems(self, manifest: Manifest) -> list[str]:
        """Where a shard's own manifest disagrees with the index's (each shard of a paramio folder has one)."""
        if not self.has_manifest:
            return []
        entries = {t.name: t for t in manifest.tensors}
        aliases = manifest.alias_map()
        problems = []
        for shard, path in self._files.items():
            source = self._shard(shard)
            if not source.has_manifest:
                problems.append(f"{path}: the shard has no paramio manifest, the index has one")
                continue
            own = source.manifest(check=True)
            for entry in own.tensors:
                if entries.get(entry.name) != entry:
                    problems.append(f"{path}: tensor `{entry.name}`: the shard's manifest and the index's disagree "
                                    "(a shard of another checkpoint?)")
            for alias, canonical in own.alias_map().items():
                if aliases.get(alias) != canonical:
                    problems.append(f"{path}: alias `{alias}`: the shard ties it to `{canonical}`, the index "
                                    f"does not")
        return problems

    def location_problems(self) -> list[str]:
        problems = self._shard_problems(self._parsed)
        layout = Layout.of_index(self.location.index.name)  # type: ignore[union-attr]
        listed = {self._files[s].name for s in self._files}
        pattern = layout.pattern()
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(self.location.root)):
                if (pattern.fullmatch(name) and name not in listed and name != layout.single
                        and not name.endswith(INDEX_SUFFIX)):
                    problems.append(f"{self.location.root / name}: a shard file that the index does not list "
                                    "(left by an interrupted write?); it is not loaded")
        return problems

    def file_of(self, name: str) -> str:
        return self._owner.get(name) or self._owner.get(self._parsed.alias_map().get(name, ""), "?")

    def read(self, name: str) -> torch.Tensor:
        shard = self._owner.get(name)
        if shard is None:
            raise FormatError(f"{self.path}: no tensor `{name}` in the index")
        return self._shard(shard).read(name)

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that a file was replaced: its inode, modification time and size."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = ITEMSIZE[dtype]
    for d in shape:
        n *= d
    return n


# -- writing ---------------------------------------------------------------------------------------------------


def shard_manifest(manifest: Manifest, names: list[str]) -> Manifest:
    """The part of ``manifest`` one shard holds: its tensors, the views of them, and the tie groups of either."""
    keep = set(names)
    tensors = tuple(t for t in manifest.tensors if t.name in keep)
    views = tuple(v for v in manifest.views if v.base in keep)
    held = keep | {v.name for v in views}
    ties = tuple(g for g in manifest.ties if g.canonical in held)
    return manifest.model_copy(update={"tensors": tensors, "views": views, "ties": ties})


class ShardedSink(Sink):
    """Shards planned as huggingface_hub plans them (``options["max_shard_size"]``), each written by a
    :class:`FileSink` as its tensors come; everything in one shard writes the single file instead."""

    def __init__(self, location: Location, staging: Staging, manifest: Manifest, algorithm: str | None,
                 options: Mapping[str, Any]) -> None:
        super().__init__(location, staging, manifest, algorithm, options)
        assert location.index is not None  # noqa: S101 - set by folder_output
        self.layout = Layout.of_index(location.index.name)
        limit = parse_size(options.get("max_shard_size") or DEFAULT_MAX_SHARD_SIZE)
        self._groups = plan_shards([(t.name, _nbytes(t.dtype, t.shape)) for t in manifest.tensors], limit)
        folder = location.root
        try:
            staging.make_folder(folder)
        except OSError as e:
            raise FormatError(f"{folder}: cannot create the folder: {e.strerror or e}") from e
        self._single: FileSink | None = None
        if len(self._groups) <= 1:
            final = folder / self.layout.single
            self._single = FileSink(Location(final, "file", location.format, final), staging, manifest,
                                    algorithm, options)
            staging.after_commit(lambda: _remove_previous(folder, self.layout, {self.layout.single}))
            return
        count = len(self._groups)
        self._finals = [self.layout.shard(i, count) for i in range(count)]
        self._hidden = [hidden_name(self.layout, final) for final in self._finals]
        self._index_temp = staging.temp_for(location.index)  # registered first: renamed last
        self._shard_of = {name: i for i, group in enumerate(self._groups) for name in group}
        self._left = [len(group) for group in self._groups]
        self._sinks: dict[int, FileSink] = {}
        self._sums: dict[str, str | None] = {}

    def write(self, entry: TensorEntry, tensor: torch.Tensor) -> WriteResult:
        if self._single is not None:
            return self._single.write(entry, tensor)
        i = self._shard_of[entry.name]
        sink = self._sinks.get(i)
        if sink is None:
            hidden = self.location.root / self._hidden[i]
            sink = FileSink(Location(hidden, "file", self.location.format, hidden), self.staging,
                            shard_manifest(self.manifest, self._groups[i]), self.algorithm, self.options)
            self._sinks[i] = sink
        sink.write(entry, tensor)
        self._left[i] -= 1
        if not self._left[i]:
            done = self._sinks.pop(i).finish()
            self._sums.update((t.name, t.checksum) for t in done.tensors)
        return WriteResult(entry.name, self._finals[i], tensor.nbytes)

    def finish(self) -> Manifest:
        if self._single is not None:
            return self._single.finish()
        if self._sinks or any(self._left):
            raise InternalError("the sharded sink was finished before every shard was written")
        final = self.manifest.model_copy(update={"tensors": tuple(
            with_checksum(t, self._sums[t.name]) for t in self.manifest.tensors)})
        sizes = {t.name: _nbytes(t.dtype, t.shape) for t in final.tensors}
        total = sum(sizes.values())
        aliases = {a: c for a, c in final.alias_map().items() if c in sizes}
        text = final.to_json()

        def index(names: list[str]) -> bytes:
            return index_json({n: names[i] for i, group in enumerate(self._groups) for n in group}, total, aliases,
                              text)

        with open(self._index_temp, "wb") as fh:
            fh.write(index(self._hidden))
            self.staging.sync(fh)
        last = index(self._finals)
        self.staging.after_commit(lambda: self._final_names(last))
        return final

    def _final_names(self, index: bytes) -> None:
        """Step 2: the hidden shards linked to their final names, then the index naming those, then clean-up."""
        folder = self.location.root
        with staged(self.staging.durable) as staging:
            temp = staging.temp_for(self.location.index)
            with open(temp, "wb") as fh:
                fh.write(index)
                staging.sync(fh)
            for hidden, final in zip(self._hidden, self._finals, strict=True):
                _link_or_copy(folder / hidden, staging.temp_for(folder / final))
        _remove_previous(folder, self.layout, {self.layout.index, *self._finals})

    def abort(self) -> None:
        for sink in (self._single, *getattr(self, "_sinks", {}).values()):
            if sink is not None:
                with contextlib.suppress(ParamioError, OSError):
                    sink.abort()


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a second name of ``source`` (a copy where the file system has no hard links)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _remove_previous(folder: Path, layout: Layout, keep: set[str]) -> None:
    """Remove the files of the previous checkpoint (index first, so that no index names a removed shard) and
    what dead writes left."""
    stale = stale_files(folder, layout, keep)
    remove(sorted(stale, key=lambda p: not p.name.endswith(INDEX_SUFFIX)))

