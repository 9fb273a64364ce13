"""Sharded folders, the Hugging Face layout: shard sizes, shard planning, the index file, and the folder's
clean-up after the index (the commit point) is in place.

The layout (``model.safetensors.index.json`` naming ``model-00001-of-00003.safetensors`` …) is what
transformers and huggingface_hub read and write; planning is huggingface_hub's
``split_torch_state_dict_into_shards`` rule, so the same limit gives the same shards. An index is untrusted
input like any file: its size, its entries and every shard name are checked before anything is opened, and
no shard name may lead outside the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import limits
from .atomic import _HOST, _alive
from .errors import FormatError
from .formats.base import MANIFEST_KEY
from .formats.registry import SUFFIXES

__all__ = ["LAYOUTS", "DEFAULT_MAX_SHARD_SIZE", "INDEX_SUFFIX", "Layout", "Index", "parse_size", "plan_shards",
           "read_index", "index_json", "shard_path", "hidden_name", "stale_files", "remove"]

INDEX_SUFFIX = ".index.json"
#: huggingface_hub's and transformers' default.
DEFAULT_MAX_SHARD_SIZE = "5GB"
#: Index keys that are not aliases (huggingface_hub and transformers write these).
_RESERVED = ("total_size", "total_parameters", "format", MANIFEST_KEY)


@dataclass(frozen=True)
class Layout:
    """How a folder's files are named: ``<prefix><suffix>`` alone, or ``<prefix>-0000i-of-0000N<suffix>``
    shards and the index ``<prefix><suffix>.index.json``."""

    prefix: str
    suffix: str

    @property
    def single(self) -> str:
        return f"{self.prefix}{self.suffix}"

    @property
    def index(self) -> str:
        return f"{self.single}{INDEX_SUFFIX}"

    def shard(self, i: int, count: int) -> str:
        return f"{self.prefix}-{i + 1:05d}-of-{count:05d}{self.suffix}"

    def pattern(self) -> re.Pattern[str]:
        """The names huggingface_hub's save removes before writing: the single file, shards and index."""
        return re.compile(re.escape(self.prefix) + r"(-\d{5}-of-\d{5})?" + re.escape(self.suffix)
                          + r"(" + re.escape(INDEX_SUFFIX) + r")?")

    def hidden_pattern(self) -> re.Pattern[str]:
        """Shards a paramio write committed under hidden names (group 1: host, 2: pid), and their
        temporaries."""
        return re.compile(r"\.\.?" + re.escape(self.prefix) + r"-\d{5}-of-\d{5}\.([0-9a-f]{8})-(\d+)-[0-9a-f]{12}"
                          + re.escape(self.suffix) + r"(\.[0-9a-f]{8}-\d+-[0-9a-f]{32}\.partial)?")

    @classmethod
    def of_index(cls, name: str) -> Layout:
        """The layout an index file name implies (``model.safetensors.index.json`` -> model, .safetensors)."""
        stem = PurePosixPath(name[: -len(INDEX_SUFFIX)])
        return cls(stem.stem, stem.suffix)


#: The Hugging Face names of each format with a sharded layout.
LAYOUTS: dict[str, Layout] = {
    "safetensors": Layout("model", ".safetensors"),
    "torch": Layout("pytorch_model", ".bin"),
}

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_size(size: int | str) -> int:
    """Bytes from an int or "500MB" / "5GB" (powers of 1000) / "2GiB" (powers of 1024), as
    huggingface_hub's ``parse_size_to_int`` reads the decimal units."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"max_shard_size {size!r}: give bytes as an int, or a string such as '500MB' or '2GiB'")
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"max_shard_size {size!r}: not a size; use e.g. 500MB, 5GB (powers of 1000) or "
                             "2GiB (powers of 1024)")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"max_shard_size {size!r}: must be at least one byte")
    return value


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Stored tensors (name, bytes, in manifest order) grouped into shards, exactly as huggingface_hub's
    splitter groups them: greedy, a new shard when the next tensor would pass the limit, and a tensor larger
    than the limit alone in a shard of its own, placed *before* the shard being filled (its quirk, kept so
    that the same limit gives the same files). Aliases and views are not stored, so a tie group and a view's
    base never span shards."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes:
        if size > max_shard_size:
            shards.append([name])
            continue
        if current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


# -- the index ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Index:
    """A parsed index: every stored name with its shard file (in the index's order), the alias pairs, the
    paramio manifest text if any, user metadata, and ``total_size`` if given."""

    path: Path
    weight_map: dict[str, str]
    links: dict[str, str] = field(default_factory=dict)
    manifest_json: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    total_size: int | None = None

    def shards(self) -> list[str]:
        """Each shard file once, in the order the index first names it."""
        return list(dict.fromkeys(self.weight_map.values()))


def _pairs_no_duplicates(path: Path):  # noqa: ANN202 - a json hook
    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                raise FormatError(f"{path}: invalid index: key `{key}` appears twice (a tensor in two shards?)")
            out[key] = value
        return out
    return hook


def read_index(path: Path) -> Index:
    """Parse an index file, refusing (FormatError naming it) anything but the documented shape within caps."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.MAX_INDEX_BYTES:
                raise FormatError(f"{path}: a {size}-byte index, more than the cap of {limits.MAX_INDEX_BYTES}")
            raw = fh.read(limits.MAX_INDEX_BYTES + 1)
    except FileNotFoundError as e:
        raise FormatError(f"{path}: no such index file") from e
    except IsADirectoryError as e:
        raise FormatError(f"{path}: a folder, not an index file") from e
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    if len(raw) > limits.MAX_INDEX_BYTES:
        raise FormatError(f"{path}: index larger than the cap of {limits.MAX_INDEX_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates(path))
    except FormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{path}: not a valid index: not UTF-8 JSON ({type(e).__name__})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(f'{path}: not a valid index: expected an object with a "weight_map" object')
    weight_map = doc["weight_map"]
    if len(weight_map) > limits.MAX_TENSORS:
        raise FormatError(f"{path}: {len(weight_map)} tensors, more than the cap of {limits.MAX_TENSORS}")
    for name, shard in weight_map.items():
        if not name or len(name) > limits.MAX_NAME or not isinstance(shard, str):
            raise FormatError(f"{path}: invalid index: weight_map entry `{name[:80]}` must map a name of 1 to "
                              f"{limits.MAX_NAME} characters to a shard file name")
    meta = doc.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise FormatError(f'{path}: not a valid index: "metadata" must be an object')
    return _index_from(path, weight_map, meta)


def _index_from(path: Path, weight_map: dict[str, str], meta: dict[str, object]) -> Index:
    total = meta.get("total_size")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise FormatError(f"{path}: invalid index: total_size must be a non-negative integer, not {total!r}")
    manifest_json = meta.get(MANIFEST_KEY)
    if manifest_json is not None and not isinstance(manifest_json, str):
        raise FormatError(f"{path}: invalid index: metadata `{MANIFEST_KEY}` must be a string")
    links: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for key, value in meta.items():
        if key in _RESERVED or not isinstance(value, str):
            continue
        if value in weight_map and key not in weight_map:
            links[key] = value  # huggingface_hub's alias pairs: {alias: kept name}
        else:
            metadata[key] = value
    return Index(path, dict(weight_map), links, manifest_json, metadata, total)


def index_json(weight_map: Mapping[str, str], total_size: int, aliases: Mapping[str, str],
               manifest_json: str) -> bytes:
    """The index as huggingface_hub's ``save_torch_state_dict`` writes it (``{"metadata": {"total_size": N,
    alias: canonical, …}, "weight_map": …}``, two-space indent), with the paramio manifest in the metadata."""
    metadata: dict[str, object] = {"total_size": total_size}
    for alias, canonical in aliases.items():
        if alias not in metadata:
            metadata[alias] = canonical
    metadata[MANIFEST_KEY] = manifest_json
    return json.dumps({"metadata": metadata, "weight_map": dict(weight_map)}, indent=2).encode("utf-8")


def shard_path(folder: Path, name: str, index: Path, format: str) -> Path:
    """The file a shard name denotes, refused (FormatError naming it) unless it is a relative name of the
    index's format that stays inside ``folder`` once symbolic links are resolved."""
    def refuse(why: str) -> FormatError:
        return FormatError(f"{index}: shard `{name[:200]}`: {why}; an index may only name shard files inside "
                           "its own folder")

    if "\x00" in name or "\\" in name:
        raise refuse("not a plain relative file name")
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise refuse("an absolute path")
    if ".." in pure.parts or not pure.parts or pure.name in ("", "."):
        raise refuse("a path that climbs out of the folder (`..`)")
    if SUFFIXES.get(pure.suffix.lower()) != format:
        raise refuse(f"not a {format} file name")
    path = folder.joinpath(*pure.parts)
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        raise refuse("leads outside the folder (a symbolic link?)")
    if real == os.path.realpath(index):
        raise refuse("the index itself")
    if not os.path.exists(real):
        raise FormatError(f"{path}: shard missing (the index {index.name} lists it); the folder is incomplete")
    if not os.path.isfile(real):
        raise FormatError(f"{path}: shard is not a regular file")
    return path


# -- writing: names and clean-up ------------------------------------------------------------------------------


def hidden_name(layout: Layout, final: str) -> str:
    """A unique hidden name for a new shard, committed under it before its final name is free: it carries
    this host and process, so a later write knows whether it is a dead write's leftover."""
    stem = final[: -len(layout.suffix)]
    return f".{stem}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}{layout.suffix}"


def stale_files(folder: Path, layout: Layout, keep: Iterable[str]) -> list[Path]:
    """Files of this layout that the checkpoint in place does not use: the single file, shards and index of a
    previous checkpoint (what huggingface_hub's save removes), and hidden shards (and their temporaries) of
    this process or of dead writes on this host. ``keep``: the names the new checkpoint uses."""
    keep = set(keep)
    visible, hidden = layout.pattern(), layout.hidden_pattern()
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if name in keep:
            continue
        if visible.fullmatch(name):
            out.append(folder / name)
            continue
        match = hidden.fullmatch(name)
        if match and match.group(1) == _HOST:
            pid = int(match.group(2))
            if pid == os.getpid() or not _alive(pid):
                out.append(folder / name)
    return out


def remove(paths: Iterable[Path]) -> None:
    """Remove files, best effort (a file already gone is fine)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
