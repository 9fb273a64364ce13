"""Reading checkpoints: the manifest without tensor data, and whole checkpoints with identity restored
(aliases the very same tensor object, views views of their base), from any location."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ._gc import paused_gc
from .checkpoint import Checkpoint
from .devices import resolve_device
from .checksum import algorithm_of, digest, tensor_bytes
from .locations import Source, open_source
from .locations.base import checksum_mismatch
from .manifest import GRAD_PREFIX, Manifest, TensorEntry
from .ties import view_of

__all__ = ["read_manifest", "load", "verify_all", "checkpoint_from"]

#: Tensors of at least this many bytes are verified in worker threads; smaller ones cost less in line.
_THREAD_MIN = 1 << 20


@paused_gc
def read_manifest(path: str | Path, *, format: str | None = None) -> Manifest:
    """The manifest of a checkpoint (any location), reading no tensor data."""
    with open_source(path, format) as source:
        return source.manifest()


def verify_all(source: Source, entries: Sequence[TensorEntry], tensors: Sequence[torch.Tensor]) -> None:
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
            raise checksum_mismatch(source.origin(entry.name), entry.name)


def checkpoint_from(manifest: Manifest, stored: Sequence[torch.Tensor], device: torch.device | None = None
                    ) -> Checkpoint:
    """A checkpoint over the stored tensors (in manifest order): views rebuilt over their base, every alias
    the very tensor object of its canonical."""
    tensors: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    for entry, tensor in zip(manifest.tensors, stored, strict=True):
        if device is not None and tensor.device != device:
            tensor = tensor.to(device)
        if entry.kind == "gradient":
            grads[entry.name[len(GRAD_PREFIX):]] = tensor
        else:
            tensors[entry.name] = tensor
    for view in manifest.views:
        tensors[view.name] = view_of(tensors[view.base], view)
    for group in manifest.ties:
        for alias in group.aliases:
            tensors[alias] = tensors[group.canonical]
    return Checkpoint(tensors, manifest, grads)


@paused_gc
def load(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
         format: str | None = None) -> Checkpoint:
    """Every name in the checkpoint; aliases are the very same tensor object as their canonical."""
    target = resolve_device(device)  # before any file is opened
    with open_source(path, format) as source:
        manifest = source.manifest()
        # Entries with a checksum are verified together below; the source verifies the others' parts (chunks).
        stored = [source.read_entry(entry, verify=verify and entry.checksum is None) for entry in manifest.tensors]
        if verify:
            verify_all(source, manifest.tensors, stored)
        return checkpoint_from(manifest, stored, target)
