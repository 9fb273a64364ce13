"""Writing ``.pt``: ``torch.save`` of a plain state dict (stored tensors in manifest order, each followed
by its views and aliases, which are the very tensor or a view of it), the manifest in ``_metadata``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ...atomic import Staging
from ...errors import FormatError
from ...manifest import Manifest, TensorEntry, ViewEntry
from ...ties import view_of
from ...upgrades import records_for_pt
from ..base import MANIFEST_KEY, Writer
from .zippatch import replace_in_data_pkl

__all__ = ["TorchWriter"]


class TorchWriter(Writer):
    """``torch.save`` needs the whole dict: tensors are collected as they come and saved in ``finish``."""

    #: torch.save needs the whole dict, so checksums are hashed while it writes and patched in after
    #: (zippatch): hashing first would cost ~8-13% more on the GPT-2 case (see FileSink's docstring).
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
            recorder = _Recorded(fh)
            try:
                torch.save(state, recorder)
            except RuntimeError as e:  # torch reports a failed write as a zip position error; say why
                if recorder.error is None:
                    raise
                raise FormatError(f"{self.final}: cannot write: {recorder.error.strerror or recorder.error}") from e
        self._tensors.clear()

    def patch(self, manifest: Manifest) -> None:
        """Swap the manifest ``finish`` pickled for ``manifest`` (same length: only checksums differ)."""
        replace_in_data_pkl(self.temp, self._written, manifest.to_json().encode("utf-8"))

    def abort(self) -> None:
        self._tensors.clear()


class _Recorded:
    """A file for ``torch.save`` that keeps the first OSError of a write: torch's zip writer turns it into an
    unrelated-looking RuntimeError ("unexpected pos ...") and drops the system's reason (ENOSPC, EFBIG)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _state_dict(manifest: Manifest, tensors: Mapping[str, torch.Tensor],
                manifest_json: str) -> OrderedDict[str, torch.Tensor]:
    """Stored tensors in manifest order, each followed by its views and aliases (a canonical always comes
    before its aliases, as in the model's own state dict); ``manifest_json`` (the manifest's JSON, which the
    caller keeps to patch) rides in ``_metadata``, with the module version records (:mod:`paramio.upgrades`)."""
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
            put(view.name, view_of(base, view))
    # Module version records beside the manifest, as state_dict() makes them: load_state_dict hands each
    # module its own (BatchNorm upgrades version-1 state dicts with them).
    records = records_for_pt(manifest.metadata)
    state._metadata = OrderedDict([(MANIFEST_KEY, manifest_json), *records])  # type: ignore[attr-defined]
    return state
