"""Reading ``.pt``: ``torch.load(weights_only=True)`` only, memory-mapped where the file is a zip archive,
every file opened once; plain state dicts and training checkpoints flattened to dotted names. Which names
share storage (ties, views) the core decides from the tensors in memory (``FileContents.memory``)."""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import torch

from ... import limits
from ...dtypes import dtype_name
from ...entries import check_tensor
from ...errors import FormatError
from ...upgrades import VERSIONS_KEY, versions_of
from ..base import MANIFEST_KEY, SKIPPED_KEY, FileContents, Reader, StoredTensor
from .legacy import Bounded, legacy_storage_bytes

__all__ = ["TorchReader", "PARALLEL_PREFIX", "STRIPPED_KEY"]

#: Keys under which training checkpoints keep the model's state dict, first match wins: the PyTorch
#: tutorial's ``{"model_state_dict", "optimizer_state_dict", "epoch", ...}``, Lightning and timm
#: (``state_dict``), fairseq (``model``), DeepSpeed (``module``).
_WRAPPERS = ("model_state_dict", "state_dict", "model", "module")
#: The prefix ``nn.DataParallel`` and ``DistributedDataParallel`` give every name of the model they wrap.
PARALLEL_PREFIX = "module."
#: Metadata key that says a prefix was taken off every name (a file without a paramio manifest only).
STRIPPED_KEY = "paramio.stripped_prefix"
_ZIP_MAGIC = b"PK\x03\x04"
#: Deflate expands at most ~1032:1; a compressed record declaring more than that is not honest.
_MAX_EXPANSION = 1032
#: What a pickle holds beside the manifest (names, shapes, storage keys): generous for a million tensors.
_PICKLE_SLACK = 256 << 20


class TorchReader(Reader):
    """Unpickles at open; zip files are memory-mapped, so no tensor data is read until a tensor is read (and
    then copied out of the mapping)."""

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
        self._mapped = zipped
        self._record_starts: dict[int, int] = {}
        if zipped:
            self._check_zip()
        else:
            self._check_legacy()
        obj = self._load(zipped)
        self._tensors, skipped, self._manifest_json = self._flatten(obj)
        self._base = _mapping_base(self._tensors.values(), self._record_starts) if zipped else None
        self._metadata = {SKIPPED_KEY: json.dumps(skipped)} if skipped else {}
        if self._manifest_json is None:  # a paramio manifest has its names and versions already
            stripped = _strip_parallel_prefix(self._tensors)
            if stripped:
                self._metadata[STRIPPED_KEY] = PARALLEL_PREFIX
            versions = _stripped_prefixes(versions_of(self._records)) if stripped else versions_of(self._records)
            if versions:
                self._metadata[VERSIONS_KEY] = json.dumps(versions)

    def _check_zip(self) -> None:
        """Bounds-check the archive's records (from its central directory) before torch maps or inflates any."""
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
            self._check_record(info)
        self._record_starts = _data_starts(self._fh.fileno(), records, size, str(self.path))

    def _check_record(self, info: zipfile.ZipInfo) -> None:
        """torch.save stores every record uncompressed. A compressed tensor record would be mapped as it lies
        (torch.load(mmap=True) reads the deflated bytes as values); any other compressed record is inflated
        whole into memory at the size the archive declares, so that size is bounded before torch sees it (a
        zip bomb: 2 MB declaring 2 GiB)."""
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise FormatError(f"{self.path}: record `{info.filename}` is stored uncompressed but declares "
                                  f"{info.file_size} bytes for {info.compress_size} (corrupt archive)")
            return
        if PurePosixPath(info.filename).parent.name == "data":
            raise FormatError(f"{self.path}: tensor record `{info.filename}` is compressed; paramio maps tensor "
                              "data straight from the file, which needs it stored uncompressed, as torch.save "
                              "writes it (re-save it with torch.save)")
        cap = min(limits.MAX_MANIFEST_BYTES + _PICKLE_SLACK, _MAX_EXPANSION * info.compress_size + _PICKLE_SLACK)
        if info.file_size > cap:
            raise FormatError(f"{self.path}: compressed record `{info.filename}` declares {info.file_size} bytes "
                              f"once inflated from {info.compress_size} (more than the {cap} allowed); refused "
                              "before inflating it (a zip bomb?)")

    def _check_legacy(self) -> None:
        """Bound a legacy (pre-zip) file's storages by its size: torch allocates each storage at the size the
        pickle claims before reading its data, so a crafted 1 kB file could ask for terabytes."""
        size = os.stat(self._source).st_size
        try:
            with open(self._source, "rb") as fh:
                claimed = legacy_storage_bytes(Bounded(fh, size))
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
                    return torch.load(Bounded(fh, os.fstat(fh.fileno()).st_size), map_location="cpu",
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
        self._records = getattr(root, "_metadata", None)
        manifest_json = self._records.get(MANIFEST_KEY) if isinstance(self._records, Mapping) else None
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
                if not 0 < len(name) <= limits.MAX_NAME:
                    raise FormatError(f"{self.path}: tensor name {name[:40]!r}: a name has 1 to {limits.MAX_NAME} "
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
        try:
            check_tensor(name, tensor)  # what save refuses, a file cannot bring in either
        except FormatError as e:
            raise FormatError(f"{self.path}: {e}") from None
        held = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        if tensor.numel() > held:
            # Stride 0 or overlapping strides: a 1.5 kB file can declare a 4 TiB tensor over one stored element,
            # which every use (a copy, a checksum, statistics, a diff) would then expand.
            raise FormatError(f"{self.path}: tensor `{name}` declares {tensor.numel()} elements (shape "
                              f"{list(tensor.shape)}, strides {list(tensor.stride())}) over a storage of {held}; "
                              "refused: its elements repeat, and a copy would need "
                              f"{tensor.numel() * tensor.element_size()} bytes. Save it with .contiguous() so that "
                              "every element is stored")
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
        """The tensor in memory of its own, as ``torch.load`` without mmap gives it: the mapping the file was
        read through would change, or fault, if another program rewrote the file in place."""
        try:
            tensor = self._tensors[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor `{name}`") from None
        if not self._mapped:
            return tensor
        if self._base is None or not tensor.is_contiguous() or tensor.nbytes == 0:
            return tensor.clone()
        # pread the bytes from the file opened once, rather than copying them out of the mapping: no page of
        # the mapping becomes resident, and read() is faster than page faults
        start = tensor.untyped_storage().data_ptr() - self._base + tensor.storage_offset() * tensor.element_size()
        data = torch.empty(tensor.nbytes, dtype=torch.uint8)
        view, done = memoryview(data.numpy()), 0
        while done < tensor.nbytes:
            n = os.preadv(self._fh.fileno(), [view[done:]], start + done)
            if n == 0:
                raise FormatError(f"{self.path}: ends inside tensor `{name}` (truncated, or rewritten in place "
                                  "while being read)")
            done += n
        return data.view(tensor.dtype).view(tensor.shape)

    def close(self) -> None:
        self._tensors = {}
        self._fh.close()


def _strip_parallel_prefix(tensors: dict[str, torch.Tensor]) -> bool:
    """Take ``module.`` off every name when every name has it (a DataParallel/DDP model's state dict, which
    loads into the model it wraps only without it); True when it did."""
    if not tensors or not all(n.startswith(PARALLEL_PREFIX) and len(n) > len(PARALLEL_PREFIX) for n in tensors):
        return False
    stripped = {n[len(PARALLEL_PREFIX):]: t for n, t in tensors.items()}
    tensors.clear()
    tensors.update(stripped)
    return True


def _stripped_prefixes(versions: dict[str, int]) -> dict[str, int]:
    """Module version records of a stripped state dict: ``module`` is the root, ``module.x`` is ``x``."""
    out = {}
    for prefix, version in versions.items():
        if prefix == PARALLEL_PREFIX[:-1]:
            out[""] = version
        elif prefix.startswith(PARALLEL_PREFIX):
            out[prefix[len(PARALLEL_PREFIX):]] = version
    return out


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


def _data_starts(fd: int, records: list[zipfile.ZipInfo], size: int, where: str) -> dict[int, int]:
    """Where each tensor record's bytes begin in the file (after its local header, whose name and extra field
    lengths the central directory does not give: torch.save pads the extra field to align the data), and
    how many bytes it holds."""
    starts: dict[int, int] = {}
    for info in records:
        if PurePosixPath(info.filename).parent.name != "data":
            continue
        header = os.pread(fd, 30, info.header_offset)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise FormatError(f"{where}: zip record `{info.filename}` has no local header at byte "
                              f"{info.header_offset} (corrupt archive)")
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30],
                                                                                                    "little")
        if start + info.compress_size > size:
            raise FormatError(f"{where}: record `{info.filename}` runs past the end of the file (truncated?)")
        starts[start] = info.compress_size
    return starts


def _mapping_base(tensors: Iterable[torch.Tensor], starts: Mapping[int, int]) -> int | None:
    """The address at which ``torch.load(mmap=True)`` mapped the file, from the tensors' storages (each one a
    slice of that mapping: its record's data, of its record's size). None unless exactly one address puts
    every storage at the start of a record of its size; reads then fall back to copying out of the mapping."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    storages = {p: n for p, n in storages.items() if n}
    if not storages:
        return None
    first = min(storages)
    found = []
    for start in sorted(s for s, n in starts.items() if n == storages[first]):
        base = first - start
        if all(starts.get(p - base) == n for p, n in storages.items()):
            found.append(base)
            if len(found) > 1:
                return None  # ambiguous (say, one storage among records of its size): copy instead
    return found[0] if found else None
