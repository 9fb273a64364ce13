"""HDF5: one dataset per canonical tensor under ``/tensors/<name>``, each alias a hard link to its canonical
dataset (stock h5py lists every name and ``f[alias] == f[canonical]``), gradients under ``/grads/<name>``,
the manifest in the root attribute ``paramio.manifest``.

Names are flat link names that keep their dots (``/tensors/0.weight``), not one group per module level:
``list(f["tensors"])`` is then the state-dict key list a stock h5py user expects, an alias such as
``4.weight`` stays one link beside its canonical, and no name can clash with a module group (a tensor named
``0`` beside ``0.weight``). A ``/`` is HDF5's own separator, so a name containing one becomes nested
groups, and reading turns paths below ``/tensors`` back into names.

The bytes are deterministic: no timestamps on any object (``track_times`` off, groups created here rather
than as HDF5's timestamped intermediate groups), links created in manifest order, the file format pinned to
HDF5 1.8 (``libver="v108"``), which also stores attributes past 64 KiB (large manifests) in dense storage.
Datasets are contiguous and unfiltered by default, and those of 64 KiB or more are aligned to 64 bytes, so
reading maps them straight from the file (copy-on-write) at ``ds.id.get_offset()``; a smaller one may be
copied if it is not aligned for its dtype (aligning every dataset made saving 20,000 small tensors 1.5x
slower than plain h5py); chunked, filtered or foreign-byte-order datasets are read through h5py instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from h5py import h5, h5a, h5d, h5g, h5l, h5o, h5p, h5s, h5t

from .. import limits
from ..atomic import Staging
from ..dtypes import torch_dtype
from ..errors import FormatError
from ..manifest import GRAD_PREFIX, Manifest, TensorEntry
from ._mapped import MappedFile
from .base import MANIFEST_KEY, FileContents, Format, Reader, StoredTensor, Writer

__all__ = ["HDF5Format", "MANIFEST_KEY", "DTYPE_ATTR", "TENSORS", "GRADS"]

#: Attribute naming the torch dtype of a dataset that holds raw bits (bfloat16, float8).
DTYPE_ATTR = "dtype"
TENSORS = "tensors"
GRADS = "grads"

_LIBVER = ("v108", "v108")
_ALIGNMENT = 64
#: Datasets smaller than this are not aligned: HDF5's aligned allocation costs ~30 us a dataset.
_ALIGN_MIN = 64 << 10
#: dtypes HDF5 has no type for, stored as their raw bits.
_RAW_BITS: dict[str, np.dtype] = {
    "bfloat16": np.dtype(np.uint16),
    "float8_e4m3fn": np.dtype(np.uint8),
    "float8_e5m2": np.dtype(np.uint8),
}
#: native numpy dtype <-> manifest name, for everything HDF5 (through h5py) has a type for.
_NUMPY: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float64", "float32", "float16", "complex64", "complex128", "int64", "int32", "int16", "int8",
                 "uint64", "uint32", "uint16", "uint8", "bool")
}
_NAMES = {dt: name for name, dt in _NUMPY.items()}
_COMPRESSIONS = ("gzip", "lzf")
#: zlib expands at most ~1032:1; a dataset claiming more bytes than that over what it stores is refused.
_MAX_EXPANSION = 1032
#: Soft links followed through other soft links at most this deep (HDF5's own default limit, H5L_NUM_LINKS).
_MAX_SOFT_DEPTH = 16


def _write_text_attr(attrs: h5py.AttributeManager, key: str, text: str) -> None:
    """Store text as a fixed-length UTF-8 string attribute (inline, not in the global heap; h5py users read it
    as bytes). See ``HDF5Reader._text_attr`` for why variable-length strings are avoided."""
    data = text.encode("utf-8")
    attrs.create(key, np.bytes_(data), dtype=h5py.string_dtype("utf-8", max(len(data), 1)))


def _storage_dtype(name: str) -> np.dtype:
    """The numpy dtype a manifest dtype is stored as in HDF5."""
    return _RAW_BITS[name] if name in _RAW_BITS else _NUMPY[name]


@functools.cache
def _htype(name: str) -> h5t.TypeID:
    """The HDF5 type paramio writes for a manifest dtype (native order, as h5py makes it)."""
    return h5t.py_create(_storage_dtype(name), logical=True)


def _path(name: str) -> str:
    """The HDF5 path of a manifest name: ``grad/x`` -> ``grads/x``, others -> ``tensors/<name>``."""
    if name.startswith(GRAD_PREFIX):
        return f"{GRADS}/{name[len(GRAD_PREFIX):]}"
    return f"{TENSORS}/{name}"


def _check_paths(names: list[str]) -> None:
    """Refuse names HDF5 cannot hold as given: empty or ``.`` path parts, or a name that is also a group."""
    parts = {}
    for name in names:
        path = _path(name)
        pieces = path.split("/")
        if "\0" in name:
            raise FormatError(f"tensor {name!r}: HDF5 link names end at a NUL character, so this name would not read "
                              "back; rename it")
        if any(p in ("", ".") for p in pieces):
            raise FormatError(f"tensor `{name}`: HDF5 cannot store this name (empty or `.` part between slashes)")
        parts[path] = name
    for path, name in parts.items():
        pieces = path.split("/")
        for i in range(2, len(pieces)):
            prefix = "/".join(pieces[:i])
            if prefix in parts:
                raise FormatError(
                    f"tensors `{parts[prefix]}` and `{name}`: in HDF5 `/` nests groups, so `{parts[prefix]}` "
                    "cannot be both a dataset and a group; rename one of them"
                )


def _filters(options: Mapping[str, Any]) -> dict[str, Any]:
    """h5py filter keywords from save() options, checked before the file is created."""
    compression = options.get("compression")
    level = options.get("compression_opts")
    fletcher32 = options.get("fletcher32", False)
    shuffle = options.get("shuffle", False)
    if compression not in (None, *_COMPRESSIONS):
        raise FormatError(f"compression={compression!r}: HDF5 output takes None, 'gzip' or 'lzf'")
    if level is not None and (compression != "gzip" or type(level) is not int or not 0 <= level <= 9):
        raise FormatError(f"compression_opts={level!r}: a gzip level 0-9, only with compression='gzip'")
    if not isinstance(fletcher32, bool) or not isinstance(shuffle, bool):
        raise FormatError("fletcher32= and shuffle= take True or False")
    out: dict[str, Any] = {}
    if compression:
        out["compression"] = compression
        if level is not None:
            out["compression_opts"] = level
    if fletcher32:
        out["fletcher32"] = True
    if shuffle:
        out["shuffle"] = True
    return out


def _write_errors(method: Any) -> Any:
    """libhdf5's failures to write (a full disk, a file-size limit) come out of h5py as RuntimeError or
    OSError with the errno in the text: a FormatError naming the file and the system's reason instead."""

    @functools.wraps(method)
    def wrapper(self: HDF5Writer, *args: Any) -> Any:
        try:
            return method(self, *args)
        except (RuntimeError, OSError) as e:
            found = re.search(r"errno = (\d+)", str(e))
            reason = os.strerror(int(found.group(1))) if found else str(e)
            raise FormatError(f"{self.final}: cannot write HDF5: {reason}") from e

    return wrapper


class HDF5Writer(Writer):
    """Creates each dataset as its tensor arrives; hard links and the manifest are written in ``finish``."""

    @_write_errors

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        super().__init__(temp, final, staging, draft, options)
        self._filters = _filters(options)
        _check_paths([t.name for t in draft.tensors] + list(draft.alias_map()))
        self._file = h5py.File(temp, "w", libver=_LIBVER, track_order=True,
                               alignment_threshold=_ALIGN_MIN, alignment_interval=_ALIGNMENT)
        self._gcpl = h5p.create(h5p.GROUP_CREATE)
        self._gcpl.set_obj_track_times(False)
        self._gcpl.set_link_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
        self._dcpl = h5p.create(h5p.DATASET_CREATE)
        self._dcpl.set_obj_track_times(False)
        self._lcpl = h5p.create(h5p.LINK_CREATE)
        self._lcpl.set_char_encoding(h5t.CSET_UTF8)  # as h5py's own links
        self._groups: dict[str, h5g.GroupID] = {"": self._file.id}
        self._written: set[str] = set()

    def _group(self, path: str) -> h5g.GroupID:
        """The group at ``path``, created (untimestamped, creation-ordered) with its parents if needed."""
        if path not in self._groups:
            parent, _, leaf = path.rpartition("/")
            self._groups[path] = h5g.create(self._group(parent), leaf.encode(), lcpl=self._lcpl, gcpl=self._gcpl)
        return self._groups[path]

    @_write_errors
    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        array = _as_array(tensor, entry.dtype)
        parent, _, leaf = _path(entry.name).rpartition("/")
        group = self._group(parent)
        if self._filters and array.size > 0 and array.ndim > 0:  # HDF5 filters need chunks: not 0-d/empty
            dataset = h5py.Group(group).create_dataset(leaf, data=array, track_times=False, **self._filters)
            dsid = dataset.id
        else:
            space = h5s.create_simple(array.shape) if array.ndim else h5s.create(h5s.SCALAR)
            dsid = h5d.create(group, leaf.encode(), _htype(entry.dtype), space, dcpl=self._dcpl, lcpl=self._lcpl)
            if array.size:
                dsid.write(h5s.ALL, h5s.ALL, array)
        if entry.dtype in _RAW_BITS:
            _write_text_attr(h5py.Dataset(dsid).attrs, DTYPE_ATTR, entry.dtype)
        self._written.add(entry.name)

    @_write_errors
    def finish(self, manifest: Manifest) -> None:
        root = self._file.id
        for group in manifest.ties:
            if group.canonical not in self._written:  # the canonical is a view: its aliases live in the manifest
                continue
            for alias in group.aliases:
                parent, _, leaf = _path(alias).rpartition("/")
                self._group(parent).links.create_hard(leaf.encode(), root, _path(group.canonical).encode(),
                                                      lcpl=self._lcpl)
        _write_text_attr(self._file.attrs, MANIFEST_KEY, manifest.to_json())
        self._file.flush()
        self._file.close()

    def abort(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):  # after a failed write, closing may fail again
            self._file.close()


def _as_array(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """The tensor as a numpy array without a copy; raw bits for dtypes numpy/HDF5 lack."""
    if dtype in _RAW_BITS:
        bits = torch.uint16 if _RAW_BITS[dtype].itemsize == 2 else torch.uint8
        tensor = tensor.view(bits)
    return tensor.numpy()


class _OverCap(Exception):
    """An attribute larger than its cap (carries the FormatError to raise when asked for the contents)."""

    def __init__(self, error: FormatError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Dataset:
    """One dataset found in the file: what it holds and where. Datasets are not kept open: HDF5 slows down
    with many open objects (a 20,000-tensor file)."""

    dtype: str
    shape: tuple[int, ...]
    group: h5g.GroupID
    leaf: bytes
    offset: int | None  # byte offset when it can be mapped straight from the file, else None (read via h5py)


class HDF5Reader(Reader):
    """Lists the links (not the objects: ``visititems`` skips aliases) below ``/tensors`` and ``/grads``, or
    below the root in files without ``/tensors``; a hard link to a dataset listed before is a link to it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._file = h5py.File(self.path, "r")
            # The file HDF5 opened, not the name reopened: a writer may have replaced it since.
            fd = self._file.id.get_vfd_handle()
            self._size = os.fstat(fd).st_size
            self._mapped = MappedFile(fd, self._size, owns_fd=False, copy=True, name=str(self.path))
        except OSError as e:
            raise FormatError(f"{self.path}: not a readable HDF5 file (corrupt or truncated?): {e}") from e
        try:
            self._manifest_json = self._read_manifest()
            self._scan()
        except FormatError:
            self._file.close()
            raise
        except (OSError, KeyError, RuntimeError, ValueError) as e:  # HDF5 meeting a damaged structure
            self._file.close()
            raise self._fail(f"corrupt HDF5 structure: {e}") from e
        except BaseException:
            self._file.close()
            raise

    def _fail(self, problem: str) -> FormatError:
        return FormatError(f"{self.path}: {problem}")

    def _text_attr(self, attrs: h5py.AttributeManager, key: str, where: str, cap: int | None = None) -> object:
        """A text attribute, read only when it is a fixed-length string: a variable-length one lives in the
        file's global heap, and a corrupt global heap sends HDF5's reader into an endless loop (found by
        fuzzing: H5HG__cache_heap_deserialize never returns), which no Python-side check can interrupt.
        With ``cap``, an attribute declaring more bytes than that raises :class:`_OverCap` before it is read."""
        attr = h5a.open(attrs._id, key.encode())
        kind = attr.get_type()
        if not isinstance(kind, h5t.TypeStringID) or kind.is_variable_str():
            raise self._fail(f"{where} attribute `{key}` is not a fixed-length string (paramio writes it as one; "
                             "variable-length strings are refused because a corrupt heap can hang HDF5)")
        declared = kind.get_size() * max(attr.get_space().get_simple_extent_npoints(), 1)
        if cap is not None and declared > cap:
            raise _OverCap(self._fail(f"{where} attribute `{key}` declares a {declared}-byte manifest, more "
                                      f"than the cap of {cap}; refused before reading it"))
        return attrs[key]

    def _read_manifest(self) -> str | None:
        """The manifest's text, or None. One over the size cap is refused from its declared size, before a
        byte of it is read (it would be read whole, decoded and parsed); the refusal is raised by ``contents``,
        so that ``validate`` reports it like any invalid manifest."""
        self._refusal: FormatError | None = None
        if not h5a.exists(self._file.id, MANIFEST_KEY.encode()):
            return None
        try:
            value = self._text_attr(self._file.attrs, MANIFEST_KEY, "root", cap=limits.MAX_MANIFEST_BYTES)
        except _OverCap as e:
            self._refusal = e.error
            return None
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self._fail(f"root attribute {MANIFEST_KEY} is not UTF-8 text") from e
        if not isinstance(value, str):
            raise self._fail(f"root attribute {MANIFEST_KEY} is not a string")
        return value

    def _roots(self) -> list[tuple[h5g.GroupID, str]]:
        """(group, name prefix) pairs to list: paramio's layout if the file has it, else the whole file."""
        root = self._file.id
        found = []
        for name, prefix in ((TENSORS, ""), (GRADS, GRAD_PREFIX)):
            if root.links.exists(name.encode()):  # H5Lexists does not follow the link it finds
                obj = self._follow(root, name.encode(), f"/{name}")
                if isinstance(obj, h5g.GroupID):
                    found.append((obj, prefix))
        if not found or found[0][1] != "":
            return [(root, "")]
        return found

    def _follow(self, group: h5g.GroupID, leaf: bytes, shown: str, depth: int = 0) -> h5o.ObjectID:
        """The object that link ``leaf`` of ``group`` names, following hard and soft links only. Each link is
        looked at before it is followed: libhdf5 would open the file an external link names (any file, even
        a FIFO that blocks the open), anywhere on a soft link's path; paramio never reads another file."""
        try:
            info = group.links.get_info(leaf)
        except KeyError as e:
            raise self._fail(f"link `{shown}` points to nothing") from e
        if info.type == h5l.TYPE_HARD:
            return h5o.open(group, leaf)
        if info.type != h5l.TYPE_SOFT:
            raise self._external(shown, group, leaf, info.type)
        if depth >= _MAX_SOFT_DEPTH:
            raise self._fail(f"soft link `{shown}`: links to links nest more than {_MAX_SOFT_DEPTH} deep (a cycle?)")
        target = group.links.get_val(leaf)
        current = h5g.open(self._file.id, b"/") if target.startswith(b"/") else group
        walked = "" if target.startswith(b"/") else shown.rpartition("/")[0]
        for part in target.split(b"/"):
            if part in (b"", b"."):
                continue
            walked += "/" + part.decode("utf-8", "replace")
            if not isinstance(current, h5g.GroupID):
                raise self._fail(f"soft link `{shown}` -> {target.decode('utf-8', 'replace')!r} goes through "
                                 "a dataset")
            try:
                current = self._follow(current, part, walked, depth + 1)
            except FormatError as e:
                raise self._fail(f"soft link `{shown}` -> {target.decode('utf-8', 'replace')!r}: "
                                 f"{str(e).removeprefix(f'{self.path}: ')}") from e
        return current

    def _external(self, shown: str, group: h5g.GroupID, leaf: bytes, link_type: int) -> FormatError:
        """The refusal of a link that is neither hard nor soft, naming it and, for an external link, its file."""
        if link_type == h5l.TYPE_EXTERNAL:
            try:
                file, obj = (v.decode("utf-8", "replace") for v in group.links.get_val(leaf))
                where = f" to `{obj}` in {file!r}"
            except (KeyError, RuntimeError, OSError, ValueError, TypeError):
                where = ""
            return self._fail(f"`{shown}` is an external link{where}: it reads another file, which paramio "
                              "refuses (store the tensors in this file)")
        return self._fail(f"`{shown}` is a user-defined HDF5 link (type {link_type}), which paramio refuses")

    def _scan(self) -> None:
        names: dict[int, list[str]] = {}  # dataset address -> its names, in listing order
        found: dict[int, _Dataset] = {}
        soft: list[tuple[str, h5g.GroupID, bytes]] = []
        for start, prefix in self._roots():
            for name, group, leaf, link_type, address, dsid in self._walk(start, prefix):
                if link_type == h5l.TYPE_SOFT:
                    soft.append((name, group, leaf))
                elif link_type != h5l.TYPE_HARD:
                    raise self._external(name, group, leaf, link_type)
                elif dsid is None:
                    names[address].append(name)
                else:
                    names[address] = [name]
                    found[address] = self._describe(name, dsid, group, leaf)
        preferred = self._manifest_names()
        canonical: dict[int, str] = {}
        self._links: dict[str, str] = {}
        self._datasets: dict[str, _Dataset] = {}
        for address, listed in names.items():
            stored = next((n for n in listed if n in preferred), listed[0])
            canonical[address] = stored
            self._datasets[stored] = found[address]
            self._links.update({n: stored for n in listed if n != stored})
        for name, group, leaf in soft:
            try:
                address = h5o.get_info(self._follow(group, leaf, name)).addr
            except (KeyError, RuntimeError, OSError) as e:
                raise self._fail(f"soft link `{name}` points to nothing") from e
            if address not in canonical:
                raise self._fail(f"soft link `{name}` points outside the tensor datasets; paramio cannot import it")
            self._links[name] = canonical[address]

    def _walk(self, start: h5g.GroupID, prefix: str
              ) -> Iterator[tuple[str, h5g.GroupID, bytes, int, int, h5d.DatasetID | None]]:
        """(name, group, leaf, link type, address, dataset) for every link to a non-group below ``start``,
        depth first, each group in h5py's listing order; the dataset is opened at its first link only.
        Groups linked twice are refused (and so are cycles)."""
        kinds: dict[int, str] = {}  # address -> "group" | "dataset" | "other"
        stack = [(start, prefix)]
        while stack:
            group, base = stack.pop()
            entries: list[tuple[bytes, int, int]] = []
            # h5py hands every call the same LinkInfo object: copy its fields out.
            group.links.iterate(lambda n, i: entries.append((n, i.type, i.u)), idx_type=_index_of(group), info=True)
            subgroups = []
            for leaf, link_type, address in entries:
                try:
                    name = base + leaf.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise self._fail(f"link {leaf!r} below `{base or '/'}` is not a UTF-8 name") from e
                dsid = None
                if link_type == h5l.TYPE_HARD:
                    kind = kinds.get(address)
                    if kind == "group":
                        raise self._fail(f"group `{name}` is linked twice; paramio cannot import aliased groups")
                    if kind is None:
                        obj = h5o.open(group, leaf)
                        kind = kinds[address] = ("group" if isinstance(obj, h5g.GroupID) else
                                                 "dataset" if isinstance(obj, h5d.DatasetID) else "other")
                        if kind == "group":
                            subgroups.append((obj, name + "/"))
                        elif kind == "dataset":
                            dsid = obj
                    if kind != "dataset":
                        continue  # groups are walked; committed datatypes hold no tensor
                yield name, group, leaf, link_type, address, dsid
            stack.extend(reversed(subgroups))

    def _manifest_names(self) -> set[str]:
        """Stored names the manifest lists, to tell the canonical from aliases among a dataset's links."""
        if self._manifest_json is None:
            return set()
        try:
            tensors = json.loads(self._manifest_json).get("tensors", [])
            return {t["name"] for t in tensors if isinstance(t, dict) and isinstance(t.get("name"), str)}
        except (ValueError, AttributeError, TypeError, RecursionError):
            return set()  # an invalid manifest is reported by the core

    def _describe(self, name: str, dsid: h5d.DatasetID, group: h5g.GroupID, leaf: bytes) -> _Dataset:
        """Check one dataset (layout, type, bounds) before any of its data is read."""
        plist = dsid.get_create_plist()
        layout = plist.get_layout()
        if layout == h5d.VIRTUAL:
            raise self._fail(f"dataset `{name}` is a virtual dataset: it reads other files, which paramio refuses")
        if plist.get_external_count():
            raise self._fail(f"dataset `{name}` keeps its data in external files, which paramio refuses")
        space = dsid.get_space()
        if space.get_simple_extent_type() == h5s.NULL:
            raise self._fail(f"dataset `{name}` has a null dataspace: it holds no array")
        shape = tuple(int(d) for d in space.shape)
        htype = dsid.get_type()
        try:
            dtype = _NAMES.get(htype.dtype.newbyteorder("="))
        except (TypeError, ValueError):
            dtype = None
        if dtype is None:
            raise self._fail(f"dataset `{name}` has HDF5 type {htype.dtype} (strings, compound and other "
                             "non-numeric types hold no tensor)")
        if dtype in ("uint16", "uint8") and h5a.exists(dsid, DTYPE_ATTR.encode()):
            dtype = self._raw_bits_dtype(name, dsid, dtype)
        nbytes = prod(shape) * _storage_dtype(dtype).itemsize
        offset = dsid.get_offset()
        if (layout == h5d.CONTIGUOUS and plist.get_nfilters() == 0 and offset is not None
                and htype.equal(_htype(dtype))):
            if offset + nbytes > self._size:
                raise self._fail(f"dataset `{name}`: its {nbytes} bytes at offset {offset} run past the end of the "
                                 f"file ({self._size} bytes; truncated?)")
            return _Dataset(dtype, shape, group, leaf, offset)
        stored = dsid.get_storage_size()
        if stored > self._size or nbytes > _MAX_EXPANSION * stored + (1 << 20):
            raise self._fail(f"dataset `{name}`: shape {shape} needs {nbytes} bytes but the file stores {stored}; "
                             "refusing to allocate")
        return _Dataset(dtype, shape, group, leaf, None)

    def _raw_bits_dtype(self, name: str, dsid: h5d.DatasetID, bits: str) -> str:
        try:
            value = self._text_attr(h5py.Dataset(dsid).attrs, DTYPE_ATTR, f"dataset `{name}`:", cap=64)
        except _OverCap as e:
            raise e.error from None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        fits = [k for k, v in _RAW_BITS.items() if v == _NUMPY[bits]]
        if not isinstance(value, str) or value not in fits:
            raise self._fail(f"dataset `{name}`: attribute `{DTYPE_ATTR}`={value!r} does not fit its {bits} data "
                             f"(expected one of {', '.join(fits)})")
        return value

    def contents(self) -> FileContents:
        if self._refusal is not None:
            raise self._refusal
        return FileContents(
            producer="hdf5",
            stored=tuple(StoredTensor(name, d.dtype, d.shape) for name, d in self._datasets.items()),
            links=dict(self._links),
            manifest_json=self._manifest_json,
        )

    def read(self, name: str) -> torch.Tensor:
        found = self._datasets.get(name)
        if found is None:
            raise self._fail(f"no tensor `{name}`")
        dtype = torch_dtype(found.dtype)
        shape = found.shape
        bits = _storage_dtype(found.dtype)
        if prod(shape) == 0:
            return torch.empty(shape, dtype=dtype)
        if found.offset is not None:
            nbytes = prod(shape) * bits.itemsize
            if dtype == torch.bool:  # a valid bool whatever the byte holds
                return (self._mapped.tensor(found.offset, nbytes, torch.uint8) != 0).reshape(shape)
            return self._mapped.tensor(found.offset, nbytes, dtype).view(shape)
        array = np.empty(shape, dtype=bits)
        try:
            h5d.open(found.group, found.leaf).read(h5s.ALL, h5s.ALL, array)  # h5py decodes filters, byte order
        except OSError as e:
            raise self._fail(f"tensor `{name}`: cannot read its data (corrupt?): {e}") from e
        return torch.from_numpy(array).view(dtype)

    def close(self) -> None:
        self._file.close()


def _index_of(group: h5g.GroupID) -> int:
    """List a group the way h5py does: in creation order where the group tracks it, else by name."""
    if group.get_create_plist().get_link_creation_order() & h5p.CRT_ORDER_TRACKED:
        return h5.INDEX_CRT_ORDER
    return h5.INDEX_NAME


class HDF5Format(Format):
    name = "hdf5"
    suffixes = (".h5", ".hdf5")
    options = ("compression", "compression_opts", "fletcher32", "shuffle")

    reader_class = HDF5Reader
    writer_class = HDF5Writer
