"""PyTorch ``.pt`` / ``.pth`` / ``.bin``: a plain state dict written by ``torch.save``, so that
``model.load_state_dict(torch.load(p))`` works; ties are native storage sharing (an alias is the very tensor
of its canonical, a view a view of its base) and the manifest rides in the state dict's
``_metadata["paramio.manifest"]``, which survives ``torch.load(weights_only=True)``.

Reading uses ``torch.load(weights_only=True)`` only, memory-mapped where the file is a zip archive: a pickle
that would run code or build anything but tensors and containers is refused before it runs. Files from other
programs import too: a plain state dict, or a training checkpoint ``{"state_dict": ...}`` /
``{"model": ...}`` whose nested dicts flatten to dotted names. Non-tensor leaves (an epoch, a learning rate,
optimizer state outside the weights) are skipped and their names listed in the metadata under
``paramio.skipped``: they are common in training checkpoints and are not parameters, so refusing the file
would only make users unpack it by hand, while listing them keeps the skip visible. Names that share storage
become links ``{alias: first key}``; tensors that overlap without being the same view have no faithful form
without a paramio manifest and are refused.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..atomic import Staging
from ..dtypes import dtype_name
from ..errors import FormatError
from ..manifest import Manifest, TensorEntry, ViewEntry
from .base import MANIFEST_KEY, SKIPPED_KEY, FileContents, Format, Reader, StoredTensor, Writer

__all__ = ["TorchFormat", "MANIFEST_KEY", "SKIPPED_KEY"]

#: Keys under which training checkpoints keep the model's state dict.
_WRAPPERS = ("state_dict", "model")
_ZIP_MAGIC = b"PK\x03\x04"
#: The manifest's limit on a name's length.
_NAME_LIMIT = 4096


class TorchWriter(Writer):
    """``torch.save`` needs the whole dict: tensors are collected as they come and saved in ``finish``."""

    patches_checksums = True

    def __init__(self, temp: Path, final: Path, staging: Staging, draft: Manifest, options: Mapping[str, Any]):
        super().__init__(temp, final, staging, draft, options)
        self._tensors: dict[str, torch.Tensor] = {}

    def write_tensor(self, entry: TensorEntry, tensor: torch.Tensor) -> None:
        # A tensor that is a part of a larger storage would make torch.save write all of that storage.
        if tensor.storage_offset() or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        self._tensors[entry.name] = tensor

    def finish(self, manifest: Manifest) -> None:
        text = manifest.to_json()
        self._written = text.encode("utf-8")  # what patch() looks for in data.pkl
        state = _state_dict(manifest, self._tensors, text)
        # To an open file, not a path: torch.save names the zip's inner folder after the file's stem, which
        # would leak the temporary name into the bytes.
        with open(self.temp, "wb") as fh:
            torch.save(state, fh)
        self._tensors.clear()

    def patch(self, manifest: Manifest) -> None:
        """Swap the manifest ``finish`` pickled for ``manifest`` (same length: only checksums differ) inside
        the archive's ``data.pkl`` record, and fix that record's CRC-32 where the zip keeps it (its local
        header or data descriptor, and the central directory). Hand-written because no zip library edits a
        stored record in place; reading the file back checks every CRC.
        ``.data/serialization_id``, torch's opaque archive id (only logged by torch.load), stays as
        torch.save made it: the file is still the same bytes for the same input."""
        new = manifest.to_json().encode("utf-8")
        if len(new) != len(self._written):
            raise FormatError("internal error: the final manifest differs in length from the draft")
        with open(self.temp, "r+b") as fh:
            record = _first_record(fh) or _record_by_zipfile(fh)
            if record.method != zipfile.ZIP_STORED:
                raise FormatError("internal error: torch.save compressed data.pkl")
            fh.seek(record.local)
            local = fh.read(30)
            start = record.local + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            fh.seek(start)
            data = bytearray(fh.read(record.size))
            at = data.find(self._written)
            if at < 0 or data.find(self._written, at + 1) >= 0:
                raise FormatError("internal error: the manifest is not once in data.pkl")
            data[at:at + len(new)] = new
            crc = zlib.crc32(data).to_bytes(4, "little")
            fh.seek(start + at)
            fh.write(new)
            if record.flags & 0x08:  # a data descriptor after the data, with or without its signature
                fh.seek(start + record.size)
                head = fh.read(8)
                old = record.crc.to_bytes(4, "little")
                if head[:4] == b"PK\x07\x08" and head[4:8] == old:
                    fh.seek(start + record.size + 4)
                elif head[:4] == old:
                    fh.seek(start + record.size)
                else:
                    raise FormatError("internal error: data.pkl's data descriptor is not where the zip says")
            else:
                fh.seek(record.local + 14)
            fh.write(crc)
            fh.seek(record.central + 16)
            fh.write(crc)

    def abort(self) -> None:
        self._tensors.clear()


@dataclass(frozen=True)
class _Record:
    """Where a stored zip record lies: its local header, data size, CRC-32, flags, compression method and
    central directory entry."""

    local: int
    size: int
    crc: int
    flags: int
    method: int
    central: int


def _u(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at:at + size], "little")


def _first_record(fh: BinaryIO) -> _Record | None:
    """``data.pkl``'s record read from the end of the archive, as torch.save lays it out (no archive
    comment, ``data.pkl`` first in the central directory); None for any other layout. zipfile would read
    every entry of the central directory first: 90 ms for 20,000 tensors."""
    end = fh.seek(0, os.SEEK_END)
    if end < 22:
        return None
    fh.seek(end - 22)
    eocd = fh.read(22)
    if eocd[:4] != b"PK\x05\x06":
        return None
    central = _u(eocd, 16, 4)
    if central == 0xFFFFFFFF and end >= 98:  # ZIP64: a locator before this record gives the ZIP64 record
        fh.seek(end - 42)
        locator = fh.read(20)
        if locator[:4] != b"PK\x06\x07":
            return None
        fh.seek(_u(locator, 8, 8))
        record = fh.read(56)
        if record[:4] != b"PK\x06\x06":
            return None
        central = _u(record, 48, 8)
    fh.seek(central)
    entry = fh.read(46)
    if entry[:4] != b"PK\x01\x02":
        return None
    name = fh.read(_u(entry, 28, 2))
    size, local = _u(entry, 20, 4), _u(entry, 42, 4)
    if not name.endswith(b"/data.pkl") or 0xFFFFFFFF in (size, local, _u(entry, 24, 4)):
        return None
    return _Record(local, size, _u(entry, 16, 4), _u(entry, 8, 2), _u(entry, 10, 2), central)


def _record_by_zipfile(fh: BinaryIO) -> _Record:
    """``data.pkl``'s record found by zipfile, wherever the archive keeps it."""
    fh.seek(0)
    try:
        archive = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as e:
        raise FormatError(f"internal error: torch.save wrote an archive zipfile cannot read ({e})") from e
    with archive:
        info = next((i for i in archive.infolist() if i.filename.endswith("/data.pkl")), None)
        if info is None:
            raise FormatError("internal error: torch.save wrote no data.pkl record")
        at = archive.start_dir
        for _ in archive.infolist():
            fh.seek(at)
            fixed = fh.read(46)
            if fixed[:4] != b"PK\x01\x02":
                break
            lengths = [_u(fixed, i, 2) for i in (28, 30, 32)]
            if fh.read(lengths[0]).decode("utf-8", "replace") == info.filename:
                return _Record(info.header_offset, info.compress_size, info.CRC, info.flag_bits,
                               info.compress_type, at)
            at += 46 + sum(lengths)
    raise FormatError("internal error: no central directory entry for data.pkl")


def _state_dict(manifest: Manifest, tensors: Mapping[str, torch.Tensor],
                manifest_json: str) -> OrderedDict[str, torch.Tensor]:
    """Stored tensors in manifest order, each followed by its views and aliases (a canonical always comes
    before its aliases, as in the model's own state dict); ``manifest_json`` (the manifest's JSON, which the
    caller keeps to patch) rides in ``_metadata``."""
    aliases: dict[str, list[str]] = {}
    for group in manifest.ties:
        aliases.setdefault(group.canonical, []).extend(group.aliases)
    views: dict[str, list[ViewEntry]] = {}
    for view in manifest.views:
        views.setdefault(view.base, []).append(view)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()

    def put(name: str, tensor: torch.Tensor) -> None:
        state[name] = tensor
        for alias in aliases.get(name, ()):
            state[alias] = tensor

    for entry in manifest.tensors:
        base = tensors[entry.name]
        put(entry.name, base)
        for view in views.get(entry.name, ()):
            put(view.name, base.as_strided(view.shape, view.stride, base.storage_offset() + view.offset))
    state._metadata = OrderedDict([(MANIFEST_KEY, manifest_json)])  # type: ignore[attr-defined]
    return state


class TorchReader(Reader):
    """Unpickles at open; zip files are memory-mapped, so no tensor data is read until touched."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            # Every step reads the file opened here, never the name again: a writer may replace it meanwhile
            # (torch.load(mmap=True) opens a path twice: the zip, then the mapping).
            self._fh = open(self.path, "rb")
            self._source = f"/proc/self/fd/{self._fh.fileno()}" if os.path.isdir("/proc/self/fd") else str(path)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from e
        try:
            self._read_all()
        except BaseException:
            self._fh.close()
            raise

    def _read_all(self) -> None:
        try:
            with open(self._source, "rb") as fh:
                magic = fh.read(4)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from e
        if not magic:
            raise FormatError(f"{self.path}: empty file, not a PyTorch checkpoint")
        zipped = magic == _ZIP_MAGIC
        if zipped:
            self._check_zip()
        else:
            self._check_legacy()
        obj = self._load(zipped)
        self._tensors, skipped, self._manifest_json = self._flatten(obj)
        self._metadata = {SKIPPED_KEY: json.dumps(skipped)} if skipped else {}

    def _check_zip(self) -> None:
        """Bounds-check the archive's records before torch maps them."""
        size = os.stat(self._source).st_size
        try:
            with zipfile.ZipFile(self._source) as archive:
                records = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise FormatError(f"{self.path}: not a readable PyTorch checkpoint: corrupt or truncated zip archive "
                              f"({e})") from e
        for info in records:
            if info.header_offset + info.compress_size > size:
                raise FormatError(f"{self.path}: record `{info.filename}` runs past the end of the file "
                                  f"({size} bytes; truncated?)")

    def _check_legacy(self) -> None:
        """Bound a legacy (pre-zip) file's storages by its size: torch allocates each storage at the size the
        pickle claims before reading its data, so a crafted 1 kB file could ask for terabytes."""
        size = os.stat(self._source).st_size
        try:
            with open(self._source, "rb") as fh:
                claimed = _legacy_storage_bytes(_Bounded(fh, size))
        except (ValueError, IndexError, EOFError, KeyError, TypeError, OverflowError) as e:
            raise FormatError(f"{self.path}: not a readable PyTorch checkpoint (neither a zip archive nor a legacy "
                              f"torch.save pickle), corrupt or truncated: {e}") from e
        if claimed > size:
            raise FormatError(f"{self.path}: its storages claim {claimed} bytes but the file holds {size} "
                              "(corrupt or truncated legacy checkpoint)")

    def _load(self, zipped: bool) -> object:
        """``torch.load(weights_only=True)``; mmap needs the zip format (legacy files are read whole)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's notes on legacy files and pickle protocols
                if zipped:
                    return torch.load(self._source, map_location="cpu", weights_only=True, mmap=True)
                with open(self._source, "rb") as fh:  # the unpickler allocates a string's claimed length first
                    return torch.load(_Bounded(fh, os.fstat(fh.fileno()).st_size), map_location="cpu",
                                      weights_only=True)
        except pickle.UnpicklingError as e:
            raise FormatError(
                f"{self.path}: refused by torch.load(weights_only=True) ({_reason(e)}); paramio never runs code "
                "from a pickle: it reads only tensors and plain containers"
            ) from e
        except Exception as e:  # noqa: BLE001 - torch raises anything (RuntimeError, EOFError, KeyError ...)
            what = "" if zipped else " (neither a zip archive nor a legacy torch.save pickle?)"
            raise FormatError(f"{self.path}: not a readable PyTorch checkpoint{what}, corrupt or truncated: "
                              f"{_reason(e)}") from e

    def _flatten(self, obj: object) -> tuple[dict[str, torch.Tensor], list[str], str | None]:
        """(dotted name -> tensor, skipped names, manifest JSON) for a state dict or a training checkpoint."""
        if not isinstance(obj, Mapping):
            raise FormatError(f"{self.path}: holds a {type(obj).__name__}, not a state dict (a mapping of names "
                              "to tensors)")
        skipped: list[str] = []
        root: Mapping = obj
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):
            key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if key is not None:
                root = obj[key]
                skipped = [str(k) for k in obj if k != key]
        manifest_json = getattr(root, "_metadata", None)
        manifest_json = manifest_json.get(MANIFEST_KEY) if isinstance(manifest_json, Mapping) else None
        if manifest_json is not None and not isinstance(manifest_json, str):
            raise FormatError(f"{self.path}: _metadata[{MANIFEST_KEY!r}] is not a string")
        tensors: dict[str, torch.Tensor] = {}
        detached: dict[int, torch.Tensor] = {}  # one detached tensor per object: identity ties empty tensors
        stack = [("", iter(root.items()))]  # depth first, keeping the file's order
        while stack:
            prefix, items = stack[-1]
            entry = next(items, None)
            if entry is None:
                stack.pop()
                continue
            key, value = entry
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise FormatError(f"{self.path}: key {key!r} below `{prefix or '(top)'}` is not a name")
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                if not 0 < len(name) <= _NAME_LIMIT:
                    raise FormatError(f"{self.path}: tensor name {name[:40]!r}: a name has 1 to {_NAME_LIMIT} "
                                      "characters")
                if name in tensors:
                    raise FormatError(f"{self.path}: two entries flatten to the name `{name}`")
                if id(value) not in detached:
                    detached[id(value)] = self._check(name, value)
                tensors[name] = detached[id(value)]
            elif isinstance(value, Mapping):
                stack.append((f"{name}.", iter(value.items())))
            else:
                skipped.append(name)
        return tensors, skipped, manifest_json

    def _check(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout != torch.strided or tensor.is_quantized:
            kind = "quantized" if tensor.is_quantized else f"a {tensor.layout} tensor"
            raise FormatError(f"{self.path}: tensor `{name}` is {kind}; paramio stores dense tensors only (call "
                              ".to_dense() or .dequantize() before saving)")
        try:
            dtype_name(tensor.dtype)
        except ValueError as e:
            raise FormatError(f"{self.path}: tensor `{name}`: {e}") from e
        # Parameters and tensors that require grad come back detached; plain ones are already the caller's.
        return tensor if type(tensor) is torch.Tensor and not tensor.requires_grad else tensor.detach()

    def contents(self) -> FileContents:
        """Every name the file holds; which of them share storage (ties, views) the core decides."""
        return FileContents(
            producer="torch",
            stored=tuple(StoredTensor(n, dtype_name(t.dtype), tuple(t.shape)) for n, t in self._tensors.items()),
            manifest_json=self._manifest_json,
            metadata=dict(self._metadata),
            memory=self._tensors,
        )

    def read(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor `{name}`") from None

    def close(self) -> None:
        self._tensors = {}
        self._fh.close()


class _Bounded:
    """A file reader that never asks for more bytes than the file has left (pickletools would allocate a
    string's claimed length before finding the file too short)."""

    def __init__(self, fh: Any, size: int) -> None:
        self._fh = fh
        self._size = size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._fh.tell()
        return self._fh.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._fh.readline(1 << 16)

    def __getattr__(self, name: str) -> Any:  # seek, tell, fileno ...: the file's own
        return getattr(self._fh, name)


#: Legacy storage classes by pickled global, with their element sizes.
_LEGACY_STORAGES = {
    f"torch {name}Storage": dtype.itemsize
    for name, dtype in (("Double", torch.float64), ("Float", torch.float32), ("Half", torch.float16),
                        ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
                        ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool),
                        ("ComplexDouble", torch.complex128), ("ComplexFloat", torch.complex64))
}


class _Global(str):
    """A ``module name`` global, as a pickle names it."""


def _legacy_storage_bytes(fh: _Bounded) -> int:
    """Bytes the storages of a legacy file claim, read from its pickles without running them.

    A legacy file is three small pickles (magic number, protocol, system info), the object pickle whose
    persistent ids ``("storage", <class>, key, location, numel, view)`` declare the storages, then the data.
    The object pickle is replayed on a stack that knows only literals, tuples, memo and globals; any other
    opcode yields opaque values, so the stack keeps its depth whatever the pickle does.
    """
    for _ in range(3):
        for _op in pickletools.genops(fh):
            pass
    stack: list[object] = []
    memo: dict[int, object] = {}
    mark = object()
    opaque = object()
    storages: dict[object, int] = {}

    def pop_mark() -> list[object]:
        at = len(stack) - 1 - stack[::-1].index(mark)
        items = stack[at + 1:]
        del stack[at:]
        return items

    for op, arg, _pos in pickletools.genops(fh):
        name = op.name
        if name == "MARK":
            stack.append(mark)
        elif name == "STOP":
            break
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if arg is None else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            stack.append(_Global(arg))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(f"{module} {attr}") if isinstance(attr, str) and isinstance(module, str) else opaque)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            if len(items) != n:
                raise ValueError("pickle stack underflow")
            del stack[-n:]
            stack.append(tuple(items))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "BINPERSID":
            pid = stack.pop()
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                numel, itemsize = pid[4], _LEGACY_STORAGES.get(pid[1], 16)
                if type(numel) is not int or numel < 0:
                    raise ValueError(f"storage size {numel!r} is not a count")
                storages[pid[2]] = numel * itemsize
            stack.append(opaque)
        elif not op.stack_before and len(op.stack_after) == 1 and op.arg is not None:
            stack.append(arg)  # a literal: int, float, string or bytes
        else:
            if pickletools.markobject in op.stack_before:
                pop_mark()
                before = op.stack_before.index(pickletools.markobject)
            else:
                before = len(op.stack_before)
            if len(stack) < before:
                raise ValueError("pickle stack underflow")
            del stack[len(stack) - before:]
            stack.extend([opaque] * len(op.stack_after))
    return sum(storages.values())


def _reason(e: BaseException) -> str:
    """One line from torch's (often multi-paragraph) error: the sentences that say what went wrong."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    keep = []
    for line in lines:
        if line.startswith(("Weights only load failed", "Check the documentation")):
            continue
        _, marker, rest = line.partition("WeightsUnpickler error:")
        keep.append(rest.strip() if marker else line)
    text = " ".join(k for k in keep if k) or (lines[0] if lines else type(e).__name__)
    return text if len(text) <= 200 else text[:199] + "…"


class TorchFormat(Format):
    name = "torch"
    suffixes = (".pt", ".pth", ".bin")

    reader_class = TorchReader
    writer_class = TorchWriter
