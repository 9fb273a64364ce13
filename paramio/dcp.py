"""Tie-aware saves with ``torch.distributed.checkpoint``: paramio plugs into stock ``dcp.save`` on every
rank, never replaces it.

``StorageWriter`` (a ``FileSystemWriter``) stores each tie group once: an alias's chunks are not written,
its storage records point at the canonical's bytes, so stock ``dcp.load`` still fills both names (resharding
included). Every chunk is hashed as it is written; the coordinator records paramio's manifest (ties,
checksums, producer) and the chunk checksums in the metadata's ``planner_data``, then writes ``.metadata``
under a temporary name and renames it into place: the commit point, written last. A folder that already
held a checkpoint gets data files of new names, and the old ones are removed only after the commit, so a
write killed at any moment leaves the previous checkpoint whole.

``SavePlanner(model)`` (a ``DefaultSavePlanner``) records the ties and the manifest (kinds, ``requires_grad``
and the model's class from ``model``) behind any storage writer; behind DCP's own writer the alias's bytes
are still stored twice, but paramio reads the names back as one tensor.

Order of calls, as ``dcp.save`` makes them::

    planner.set_up_planner(state_dict)        # every rank: ties found from the tensors' memory
    planner.create_local_plan()                # every rank: its names, ties and kinds ride in planner_data
    planner.create_global_plan(plans)          # coordinator: the manifest, into metadata.planner_data
    writer.prepare_global_plan(plans)          # coordinator: data file names (new ones over an old checkpoint)
    writer.write_data(plan, planner)           # every rank: canonical chunks written and hashed, aliases skipped
    writer.finish(metadata, results)           # coordinator: aliases pointed at canonical bytes, checksums
                                               # recorded, .metadata renamed into place, old files removed
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as _dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import FileSystemWriter, _StorageInfo, _StoragePrefix
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .atomic import staged
from .checkpoint import producer
from .checksum import digest, resolve, tensor_bytes
from .dtypes import DTYPES, dtype_name
from .locations.dcp import chunk_key
from .locations.dcp_metadata import METADATA_NAME, PLANNER_CHUNKS_KEY, PLANNER_MANIFEST_KEY
from .locations.dcp_sink import DATA_FILE, remove_unused_data
from .manifest import GRAD_PREFIX, Manifest, TensorEntry, TieGroup
from .ties import identity_groups

__all__ = ["SavePlanner", "StorageWriter", "build_manifest", "local_ties"]

#: Where a rank's names, ties and kinds travel to the coordinator inside its plan's planner_data.
_RANK_KEY = "paramio.rank"
#: The index of the extra write result in which a rank reports its chunk checksums and ties.
_REPORT = "paramio.report"
_ALIAS = "paramio.alias"


def _local(value: object) -> torch.Tensor | None:
    """The tensor whose memory a state-dict value uses on this rank (a DTensor's local shard)."""
    if hasattr(value, "to_local") and isinstance(value, torch.Tensor):
        return value.to_local()  # type: ignore[attr-defined]
    return value if isinstance(value, torch.Tensor) else None


def local_ties(state_dict: Mapping[str, Any]) -> list[list[str]]:
    """Tie groups (canonical first, state-dict order) among a rank's state-dict values: names whose local
    tensors are the same view of the same memory, with equal global shape and dtype. Never from values."""
    named = [(k, t) for k, v in state_dict.items() if (t := _local(v)) is not None and not t.is_meta]
    groups = []
    for group in identity_groups(named):
        if len(group) < 2:
            continue
        first = state_dict[group[0]]
        same = [n for n in group if state_dict[n].shape == first.shape and state_dict[n].dtype == first.dtype]
        if len(same) > 1:
            groups.append(same)
    return groups


def build_manifest(metadata: Metadata, ranks: Sequence[Mapping[str, Any]], model_class: str | None = None
                   ) -> Manifest:
    """The manifest of a DCP checkpoint from its metadata and what each rank reported (its names in order,
    its tie groups, parameter kinds and ``requires_grad`` when a model said so)."""
    tensors = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    order = list(dict.fromkeys([n for r in ranks for n in r.get("order", ()) if n in tensors] + list(tensors)))
    alias_of: dict[str, str] = {}
    for rank in ranks:
        for group in rank.get("ties", ()):
            for alias in group[1:]:
                alias_of.setdefault(alias, group[0])
    kinds = {n: k for r in ranks for n, k in r.get("kinds", {}).items()}
    grads = {n: g for r in ranks for n, g in r.get("requires_grad", {}).items()}
    entries, ties = [], {}
    for name in order:
        if name in alias_of:
            ties.setdefault(alias_of[name], []).append(name)
            continue
        md = tensors[name]
        dtype = dtype_name(md.properties.dtype)
        kind = "gradient" if name.startswith(GRAD_PREFIX) else kinds.get(name, "parameter")
        requires_grad = grads.get(name, kind == "parameter" and DTYPES[dtype].is_floating_point)
        entries.append(TensorEntry(name=name, dtype=dtype, shape=tuple(md.size), kind=kind,
                                   requires_grad=requires_grad))
    return Manifest(producer=producer(), model_class=model_class, tensors=tuple(entries),
                    ties=tuple(TieGroup(canonical=c, aliases=tuple(a)) for c, a in ties.items()))


def _model_class(model: nn.Module) -> str:
    """The model's own class, not the wrapper class FSDP2's ``fully_shard`` swaps in (``FSDPTinyLM``)."""
    cls = next((c for c in type(model).__mro__ if not c.__module__.startswith("torch.distributed")), type(model))
    return f"{cls.__module__}.{cls.__qualname__}"


class SavePlanner(DefaultSavePlanner):
    """DCP's default planner that also records paramio's manifest: ties found from the tensors' memory on
    every rank, and, given ``model``, which names are buffers, which require gradients, and its class."""

    def __init__(self, model: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._model_class = _model_class(model) if model is not None else None
        self._kinds: dict[str, str] = {}
        self._requires_grad: dict[str, bool] = {}
        if model is not None:
            self._kinds = {n: "buffer" for n, _ in model.named_buffers(remove_duplicate=False)}
            self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
        self.ties: list[list[str]] = []

    def set_up_planner(self, state_dict: Any, storage_meta: Any = None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, storage_meta, is_coordinator)
        self.ties = local_ties(self.state_dict)

    def rank_report(self) -> dict[str, Any]:
        return {"order": [k for k, v in self.state_dict.items() if isinstance(v, torch.Tensor)], "ties": self.ties,
                "kinds": {k: v for k, v in self._kinds.items() if k in self.state_dict},
                "requires_grad": {k: v for k, v in self._requires_grad.items() if k in self.state_dict}}

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        data = dict(plan.planner_data or {})
        data[_RANK_KEY] = self.rank_report()
        self.plan = dataclasses.replace(plan, planner_data=data)
        return self.plan

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        ranks = [(p.planner_data or {}).get(_RANK_KEY, {}) for p in all_plans]
        stripped = [dataclasses.replace(p, planner_data=_without(p.planner_data, _RANK_KEY)) for p in all_plans]
        if not self.flatten_state_dict:
            stripped = [dataclasses.replace(p, planner_data=None) for p in stripped]
        plans, metadata = super().create_global_plan(stripped)
        manifest = build_manifest(metadata, ranks, self._model_class)
        planner_data = dict(metadata.planner_data or {})
        planner_data[PLANNER_MANIFEST_KEY] = manifest.to_json()
        self.metadata = dataclasses.replace(metadata, planner_data=planner_data)
        return plans, self.metadata


def _without(data: Any, key: str) -> Any:
    return {k: v for k, v in data.items() if k != key} if isinstance(data, dict) else data


class _Hashing:
    """The planner as the storage layer sees it, hashing each tensor chunk it hands out."""

    def __init__(self, planner: Any, algorithm: str | None) -> None:
        self._planner = planner
        self._algorithm = algorithm
        self.sums: dict[str, dict[str, str]] = {}

    def resolve_data(self, item: Any) -> Any:
        data = self._planner.resolve_data(item)
        if self._algorithm is not None and item.type != WriteItemType.BYTE_IO and isinstance(data, torch.Tensor):
            key = chunk_key(tuple(item.index.offset or ()))
            self.sums.setdefault(item.index.fqn, {})[key] = digest(tensor_bytes(data.detach()), self._algorithm)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)


class StorageWriter(FileSystemWriter):
    """``FileSystemWriter`` that stores each tie group once, checksums every chunk, records paramio's
    manifest and commits by renaming ``.metadata`` into place (see the module docstring).

    ``checksum``: "default" (xxh3-64), "sha256" or None; the other arguments are FileSystemWriter's."""

    def __init__(self, path: str | os.PathLike, *, checksum: str | None = "default", **kwargs: Any) -> None:
        kwargs.setdefault("overwrite", True)
        super().__init__(path, **kwargs)
        self._algorithm = resolve(checksum)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        Path(self.path).mkdir(parents=True, exist_ok=True)  # no "existing checkpoint" warning: we replace it whole
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        folder = Path(self.path)
        # Over a previous checkpoint, new data files get names of their own, so that the old .metadata keeps
        # pointing at whole files until the new one replaces it.
        tag = f"{uuid.uuid4().hex[:8]}_" if any(DATA_FILE.fullmatch(p.name) for p in folder.iterdir()) else ""
        return [dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{i}_{tag}")) for i, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: Any) -> Future[list[WriteResult]]:
        state = getattr(planner, "state_dict", None) or {}
        groups = planner.ties if isinstance(planner, SavePlanner) else local_ties(state)
        alias_of = {alias: group[0] for group in groups for alias in group[1:]}
        is_alias = [i.type != WriteItemType.BYTE_IO and i.index.fqn in alias_of for i in plan.items]
        kept = dataclasses.replace(plan, items=[i for i, a in zip(plan.items, is_alias) if not a])
        hashing = _Hashing(planner, self._algorithm)
        results = list(super().write_data(kept, hashing).wait())  # type: ignore[arg-type]
        for item in (i for i, a in zip(plan.items, is_alias) if a):
            results.append(WriteResult(index=item.index, size_in_bytes=0,
                                       storage_data=(_ALIAS, alias_of[item.index.fqn])))
        order = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
        report = {"sums": hashing.sums, "ties": groups, "order": order}
        results.append(WriteResult(index=MetadataIndex(_REPORT), size_in_bytes=0, storage_data=report))
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        storage: dict[MetadataIndex, _StorageInfo] = {}
        aliases: list[tuple[MetadataIndex, str]] = []
        reports: list[dict[str, Any]] = []
        for result in (r for rank in results for r in rank):
            if result.index.fqn == _REPORT and isinstance(result.storage_data, dict):
                reports.append(result.storage_data)
            elif isinstance(result.storage_data, tuple) and result.storage_data[:1] == (_ALIAS,):
                aliases.append((result.index, result.storage_data[1]))
            else:
                storage[result.index] = result.storage_data
        for index, canonical in aliases:  # the alias's records point at the canonical's bytes
            storage[index] = storage[MetadataIndex(canonical, index.offset)]
        sums = {fqn: chunks for r in reports for fqn, chunks in r["sums"].items()}
        planner_data = dict(metadata.planner_data) if isinstance(metadata.planner_data, dict) else {}
        manifest = self._manifest(metadata, planner_data, reports, sums)
        planner_data[PLANNER_MANIFEST_KEY] = manifest.to_json()
        planner_data[PLANNER_CHUNKS_KEY] = json.dumps(sums, sort_keys=True)
        metadata = dataclasses.replace(metadata, planner_data=planner_data, storage_data=storage,
                                       version=_dcp.filesystem.CURRENT_DCP_VERSION, storage_meta=self.storage_meta())
        commit_metadata(Path(self.path), metadata, durable=self.sync_files)

    @staticmethod
    def _manifest(metadata: Metadata, planner_data: dict, reports: list[dict], sums: dict) -> Manifest:
        """The planner's manifest (or one from the ranks' reports), with whole-tensor checksums where a
        tensor is one chunk (a chunk's checksum is then the tensor's)."""
        recorded = planner_data.get(PLANNER_MANIFEST_KEY)
        manifest = Manifest.from_json(recorded) if recorded else build_manifest(metadata, reports)
        whole = {}
        for entry in manifest.tensors:
            md = metadata.state_dict_metadata[entry.name]
            chunks = sums.get(entry.name, {})
            if isinstance(md, TensorStorageMetadata) and len(md.chunks) == 1 and len(chunks) == 1:
                whole[entry.name] = next(iter(chunks.values()))
        tensors = tuple(t.model_copy(update={"checksum": whole.get(t.name)}) for t in manifest.tensors)
        return manifest.model_copy(update={"tensors": tensors})


def commit_metadata(folder: Path, metadata: Metadata, *, durable: bool = True) -> None:
    """Write ``.metadata`` under a temporary name, fsync, rename it into place (the commit point), then
    remove the data files of an earlier checkpoint that the new metadata does not name."""
    used = {info.relative_path for info in metadata.storage_data.values()}
    with staged(durable) as staging:
        temp = staging.temp_for(folder / METADATA_NAME)
        with open(temp, "wb") as fh:
            pickle.dump(metadata, fh)
            staging.sync(fh)
        staging.after_commit(lambda: remove_unused_data(folder, used))
