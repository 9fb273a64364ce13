"""Mutation fuzzing of DCP folders, through the shared fuzzer's capped worker processes (tests/fuzzing.py):
every read path (``read_manifest``, ``load``, ``validate``, ``paramio inspect [--stats]``, ``paramio
validate``) on a mutated folder gives a paramio error naming it or verified data, never a crash, a hang, a
huge allocation, a foreign exception or code run by a hostile ``.metadata``.

Seeds: a stock ``dcp.save`` folder (a tied LM and a non-tensor entry) and a paramio-written one (every
dtype, a tie, a view). Mutations: bytes of ``.metadata`` or of a data file, and edits of the unpickled
metadata (chunk offsets and sizes, byte ranges, data file names leaving the folder, dtypes, declared sizes,
dropped or duplicated chunks, the paramio manifest and chunk checksum table, a pickle that would run code).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import paramio
from paramio.examples import tiny_lm

from .conformance import DTYPES, sample
from .fuzzing import _INTERESTING, BAD, MARKER, WorkerPool, _byte_mutation, describe, mutate_manifest

CASES = int(os.environ.get("PARAMIO_DCP_FUZZ_CASES", "120"))
BASE_SEED = int(os.environ.get("FUZZ_SEED", "5"))


def _seeds(folder: Path) -> list[Path]:
    stock = folder / "stock"
    state = tiny_lm().state_dict()
    state["step"] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(stock))
    ours = folder / "paramio"
    tensors = {f"t.{i}": sample(dtype, (3, 4), seed=i) for i, dtype in enumerate(DTYPES)}
    tensors["tied"] = tensors["t.0"]
    tensors["row"] = tensors["t.0"][1]
    paramio.save(tensors, ours, format="dcp")
    return [stock, ours]


class _Code:
    """Unpickled by a plain ``pickle.load``, it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _edit_metadata(md, rng: random.Random, case: Path) -> str:
    tensors = [k for k, v in md.state_dict_metadata.items() if hasattr(v, "chunks")]
    name = rng.choice(tensors)
    entry = md.state_dict_metadata[name]
    index = next(k for k in md.storage_data if k.fqn == name)
    info = md.storage_data[index]
    big = rng.choice(_INTERESTING + [-1, -(2**63)])
    op = rng.choice(["offset", "length", "path", "size", "chunk-size", "chunk-offset", "dtype", "drop",
                     "duplicate", "manifest", "sums", "code", "wrong-type", "storage-type"])
    if op == "offset":
        info.offset = big
    elif op == "length":
        info.length = big
    elif op == "path":
        info.relative_path = rng.choice(["../outside.distcp", "/etc/passwd", "nothere.distcp", "", ".", "..",
                                         "sub/../../x", "C:\\x", 7])
    elif op == "size":
        entry.size = torch.Size([abs(big) % (2**62) + 1] * len(entry.size)) if len(entry.size) else torch.Size([2])
    elif op == "chunk-size" and entry.chunks:
        entry.chunks[0].sizes = torch.Size([abs(big) % (2**62)] * len(entry.chunks[0].sizes))
    elif op == "chunk-offset" and entry.chunks:
        entry.chunks[0].offsets = torch.Size([abs(big) % (2**62)] * len(entry.chunks[0].offsets))
    elif op == "dtype":
        entry.properties.dtype = rng.choice([torch.int8, torch.float64, torch.bool, torch.quint8, torch.cfloat])
    elif op == "drop":
        entry.chunks = []
    elif op == "duplicate" and entry.chunks:
        entry.chunks = entry.chunks + [entry.chunks[0]]
    elif op == "manifest" and isinstance(md.planner_data, dict) and "paramio.manifest" in md.planner_data:
        md.planner_data["paramio.manifest"], what = mutate_manifest(md.planner_data["paramio.manifest"], rng)
        return f"manifest: {what}"
    elif op == "sums":
        md.planner_data = {**(md.planner_data or {}), "paramio.chunks": rng.choice(["[", "{}", '{"a": 1}', "7"])}
    elif op == "code":
        md.planner_data = {**(md.planner_data or {}), "x": _Code(case / MARKER)}
    elif op == "wrong-type":
        md.state_dict_metadata[name] = rng.choice([7, "x", [1, 2], None])
    elif op == "storage-type":
        md.storage_data = rng.choice([[1], None, {index: "x"}])
    return f"{op} of `{name}`"


def _make_case(seed: Path, rng: random.Random, case: Path) -> list[str]:
    folder = case / "model"
    shutil.copytree(seed, folder)
    done: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        meta = folder / ".metadata"
        armed = any(d.startswith("code") for d in done)  # unpickling it again here would run it
        if rng.random() < 0.5 and not armed:
            with open(meta, "rb") as fh:
                try:
                    md = pickle.load(fh)
                except Exception:  # noqa: BLE001 - an earlier byte mutation broke it: mutate the bytes instead
                    md = None
            if md is not None:
                try:
                    done.append(_edit_metadata(md, rng, case))
                except Exception as e:  # noqa: BLE001 - an earlier edit left nothing to edit: go on
                    done.append(f"edit failed: {type(e).__name__}")
                meta.write_bytes(pickle.dumps(md))
                continue
        target = meta if rng.random() < 0.5 else rng.choice(sorted(folder.glob("*.distcp")))
        data, what = _byte_mutation(target.read_bytes(), rng, [])
        target.write_bytes(data)
        done.append(f"{target.name}: {what}")
    return done


@pytest.mark.slow  # ~120 mutated folders through every read path in capped workers
def test_mutated_dcp_folders_give_paramio_errors_or_verified_data(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path / "seeds")
    requests, done = [], {}
    for i in range(CASES):
        case = tmp_path / "cases" / f"dcp-{i}"
        case.mkdir(parents=True)
        done[i] = _make_case(seeds[i % len(seeds)], random.Random(f"{BASE_SEED}:dcp:{i}"), case)
        requests.append({"fmt": "dcp", "case": i, "path": str(case / "model")})
    (tmp_path / "logs").mkdir()
    pool = WorkerPool(2, timeout=60, formats=[], log_dir=tmp_path / "logs")
    try:
        results = list(pool.map(requests))
    finally:
        pool.close()
    assert len(results) == CASES
    bad = [r for r in results if r["outcome"] in BAD]
    assert not bad, "\n".join(f"{describe(r)}\n  mutations: {done[r['case']]}" for r in bad[:5])
    assert not any((tmp_path / "cases" / f"dcp-{i}" / MARKER).exists() for i in range(CASES))
    refused = sum(r["outcome"] == "error" for r in results)
    assert refused > CASES // 3  # the mutations do reach the checks
