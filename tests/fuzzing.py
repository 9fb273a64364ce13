"""Mutation fuzzing of paramio's readers: a hostile file gives a paramio error, never a crash, a hang, an
unbounded allocation, a read outside the file, code execution or a foreign exception.

Seeds are valid files of every format, written by paramio and by the stock tools. A case applies one to
four mutations to a seed: byte-level (flip, insert, delete, truncate, overwrite or shift integers, mostly in
the header and structure rather than the tensor data) or structural (rewrite header fields: lengths,
offsets, dtypes, shapes, ranks, huge dims, negative numbers, duplicate names, deep JSON nesting, non-UTF-8,
the manifest; links, external storage and external data that point outside the file; hostile pickles).
Every read path then runs on it (``read_manifest``, ``load``, ``validate``, ``paramio inspect [--stats]``,
``paramio validate``) in a worker process with a memory cap (RLIMIT_AS) and a time limit per case. A
worker that dies (segfault, abort) or outlives the limit is a finding; so is any exception that is not a
paramio error, a paramio error that does not name the file, an allocation failure under the cap, a jump of
the worker's peak memory, and a marker file that a hostile pickle would create if it ran.

Each case is reproducible from (seed, format, case number): ``--replay FORMAT:CASE`` writes it out.
``python -m tests.fuzzing --cases 20000`` (``make fuzz``) runs a long campaign; tests/test_fuzz.py a
bounded one.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import re
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from paramio.formats.registry import SUFFIX

__all__ = ["SUFFIX", "BAD", "MARKER", "EVIL", "FOLDER", "write_seeds", "make_case", "check_file", "evil_pickle", "zip_build",
           "WorkerPool", "campaign", "describe", "main"]

ROOT = Path(__file__).resolve().parent.parent
#: Outcomes that fail a campaign.
BAD = ("bug", "crash", "hang", "memory", "unnamed", "ran-code", "leak")
MARKER = "PWNED"
MODEL_DIR = "model"
#: The pseudo-format of sharded folders (their seeds and mutations; the case's path is the folder).
FOLDER = "folder"

# -- seeds --------------------------------------------------------------------------------------------------


def _seed_tensors(dtypes: set[str]) -> dict:
    """A small dict with ties, partial aliases, a 0-d and an empty tensor, and one tensor per dtype."""
    import torch

    from paramio.dtypes import DTYPES

    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    out = {"embed.weight": base, "head.weight": base, "row": base[1], "cols": base.t(),
           "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3)}
    for name in sorted(dtypes):
        dtype = DTYPES[name]
        raw = torch.randint(0, 256, (12 * dtype.itemsize,), generator=g, dtype=torch.uint8)
        out[f"d.{name}"] = (raw % 2).bool() if dtype == torch.bool else raw.view(dtype).reshape(3, 4)
    return out


def _supported(fmt: str, folder: Path) -> set[str]:
    """The dtypes ``fmt`` saves (by trying each)."""
    import torch

    import paramio
    from paramio.dtypes import DTYPES
    from paramio.errors import FormatError

    out = set()
    for name, dtype in DTYPES.items():
        try:
            paramio.save({"x": torch.zeros(2, dtype=dtype)}, folder / f"probe{SUFFIX[fmt]}")
            out.add(name)
        except FormatError:
            pass
    return out


def _stock_seed(fmt: str, folder: Path) -> None:
    """A file written by the stock tool of ``fmt`` (no paramio manifest)."""
    import torch

    from paramio.examples import tied_mlp

    path = folder / f"stock{SUFFIX[fmt]}"
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.int64)}
    if fmt == "safetensors":
        import safetensors.torch as st

        st.save_model(tied_mlp(), path)
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            for name, t in tensors.items():
                f[name] = t.numpy()
            f["alias"] = f["a"]
            f.create_dataset("chunked", data=torch.arange(64, dtype=torch.float32).numpy(), chunks=(16,))
    elif fmt == "onnx":
        import onnx
        from onnx import helper, numpy_helper

        inits = [numpy_helper.from_array(t.numpy(), name) for name, t in tensors.items()]
        graph = helper.make_graph([helper.make_node("Identity", ["a"], ["y"])], "g", [],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="stock.onnx.data", size_threshold=0)
    elif fmt == "torch":
        buffer = io.BytesIO()
        state = tied_mlp().state_dict()
        torch.save(state, buffer)
        path.write_bytes(buffer.getvalue())
        legacy = io.BytesIO()
        torch.save(state, legacy, _use_new_zipfile_serialization=False)
        (folder / f"legacy{SUFFIX[fmt]}").write_bytes(legacy.getvalue())


def _data_ranges(blob: bytes, tensors: Iterable) -> list[tuple[int, int]]:
    """Where the seed's tensor bytes lie in the file (to aim byte mutations at everything else)."""
    out = []
    for t in tensors:
        data = t.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b""
        if len(data) >= 16:
            at = blob.find(data)
            if at >= 0:
                out.append((at, at + len(data)))
    return sorted(out)


def write_seeds(folder: Path, formats: Iterable[str]) -> dict[str, list[Path]]:
    """Valid files for each format, one folder per seed (``model/`` holds the files, ``seed.json`` notes)."""
    import torch

    import paramio
    from paramio.examples import tied_mlp, tiny_lm

    seeds: dict[str, list[Path]] = {}
    probe = folder / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt == FOLDER:
            seeds[fmt] = _folder_seeds(folder / fmt)
            continue
        dtypes = _supported(fmt, probe)
        made: list[tuple[str, Callable[[Path], list]]] = []

        def mixed(path: Path, dtypes: set[str] = dtypes) -> list:
            tensors = _seed_tensors(dtypes)
            paramio.save(tensors, path, metadata={"run": "fuzz", "ünï": "cödé ✓"})
            return list(tensors.values())

        def lm(path: Path) -> list:
            model = tiny_lm()
            paramio.save(model, path, checksum="sha256")
            return list(model.state_dict().values())

        def grads(path: Path) -> list:
            model = tied_mlp()
            model(torch.randn(3, 4)).sum().backward()
            paramio.save(model, path, grads=True)
            return [p.grad for p in model.parameters()] + list(model.state_dict().values())

        def external(path: Path) -> list:  # ONNX: tensors in a data file beside the model
            model = tiny_lm()
            paramio.save(model, path, external_data=True)
            return list(model.state_dict().values())

        made = [("mixed", mixed), ("lm", lm), ("grads", grads)] + ([("external", external)] if fmt == "onnx" else [])
        out = []
        for name, build in made:
            where = folder / fmt / name / MODEL_DIR
            where.mkdir(parents=True, exist_ok=True)
            tensors = build(where / f"checkpoint{SUFFIX[fmt]}")
            out.append(_note(where, f"checkpoint{SUFFIX[fmt]}", tensors))
        stock = folder / fmt / "stock-files"
        stock.mkdir(parents=True, exist_ok=True)
        _stock_seed(fmt, stock)
        for file in sorted(stock.iterdir()):
            if file.suffix != SUFFIX[fmt]:
                continue
            where = folder / fmt / f"stock-{file.stem}" / MODEL_DIR
            where.mkdir(parents=True, exist_ok=True)
            for other in stock.iterdir():  # a model and its external data travel together
                if other == file or other.name.startswith(file.name):
                    shutil.copy(other, where / other.name)
            out.append(_note(where, file.name, []))
        seeds[fmt] = out
    shutil.rmtree(probe, ignore_errors=True)
    return seeds


def _folder_seeds(folder: Path) -> list[Path]:
    """Sharded folders: paramio's (safetensors and torch shards, ties, views, a 0-d tensor) and
    huggingface_hub's (its alias pairs in the index, no manifest). The case's path is the folder itself."""
    import torch

    import paramio
    from paramio.examples import tiny_lm

    out = []
    tensors = {k: v for k, v in _seed_tensors({"float32", "int64", "bfloat16"}).items()}
    builds = {
        "sharded-st": lambda where: paramio.save(tiny_lm(), f"{where}/", max_shard_size=1500),
        "sharded-pt": lambda where: paramio.save(tiny_lm(), f"{where}/", format="torch", max_shard_size=1500),
        "sharded-mixed": lambda where: paramio.save(tensors, f"{where}/", max_shard_size=100),
    }
    try:
        from huggingface_hub import save_torch_state_dict

        state = tiny_lm().state_dict()
        builds["hub-st"] = lambda where: save_torch_state_dict(dict(state), where, max_shard_size=1500)
    except ImportError:
        pass
    for name, build in builds.items():
        where = folder / name / MODEL_DIR
        where.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            build(where)
        (where.parent / "seed.json").write_text(json.dumps({"main": ".", "data": []}))
        out.append(where.parent)
    return out


def _note(where: Path, main: str, tensors: list) -> Path:
    blob = (where / main).read_bytes()
    note = {"main": main, "data": _data_ranges(blob, [t for t in tensors if t is not None])}
    (where.parent / "seed.json").write_text(json.dumps(note))
    return where.parent


# -- byte-level mutations -----------------------------------------------------------------------------------

_INTERESTING = [0, 1, 2, 3, 7, 8, 16, 63, 64, 127, 128, 255, 256, 4095, 4096, 32767, 32768, 65535, 65536,
                2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _hot(data: bytes, cold: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The byte ranges outside the tensor data (headers, structure, manifest)."""
    out, pos = [], 0
    for a, b in cold:
        if a > pos:
            out.append((pos, min(a, len(data))))
        pos = max(pos, b)
    if pos < len(data):
        out.append((pos, len(data)))
    return [r for r in out if r[1] > r[0]]


def _pos(rng: random.Random, data: bytes | bytearray, hot: list[tuple[int, int]]) -> int:
    if not data:
        return 0
    if hot and rng.random() < 0.8:
        a, b = rng.choice(hot)
        return rng.randrange(a, b) if b <= len(data) else rng.randrange(len(data))
    return rng.randrange(len(data))


def _byte_mutation(data: bytes, rng: random.Random, hot: list[tuple[int, int]]) -> tuple[bytes, str]:
    buf = bytearray(data)
    op = rng.choice(["flip", "flip", "byte", "int", "int", "shift", "shift", "insert", "delete", "truncate",
                     "copy", "zero"])
    at = _pos(rng, buf, hot)
    if op == "flip":
        for _ in range(rng.choice([1, 1, 2, 4])):
            at = _pos(rng, buf, hot)
            if buf:
                buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), "flip bits"
    if op == "byte" and buf:
        buf[at] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
        return bytes(buf), f"byte at {at}"
    if op in ("int", "shift") and len(buf) >= 8:
        width = rng.choice([1, 2, 4, 8])
        at = min(at, len(buf) - width)
        order = "little" if rng.random() < 0.8 else "big"
        if op == "int":
            value = rng.choice(_INTERESTING + [len(buf), len(buf) - 1, len(buf) + 1])
        else:
            old = int.from_bytes(buf[at:at + width], order)
            value = old + rng.choice([-64, -8, -4, -2, -1, 1, 2, 4, 8, 64, 4096])
        value %= 1 << (8 * width)
        buf[at:at + width] = value.to_bytes(width, order)
        return bytes(buf), f"{op} {width}-byte int at {at} -> {value}"
    if op == "insert":
        n = rng.choice([1, 2, 4, 8, 64, 1024])
        filler = rng.choice([b"\0" * n, b"\xff" * n, rng.randbytes(n)])
        return bytes(buf[:at] + filler + buf[at:]), f"insert {n} bytes at {at}"
    if op == "delete":
        n = rng.choice([1, 2, 4, 8, 64, 1024])
        return bytes(buf[:at] + buf[at + n:]), f"delete {n} bytes at {at}"
    if op == "truncate":
        return bytes(buf[:at]), f"truncate at {at}"
    if op == "copy" and buf:
        src, n = rng.randrange(len(buf)), rng.choice([4, 8, 64, 512])
        chunk = buf[src:src + n]
        buf[at:at + len(chunk)] = chunk
        return bytes(buf), f"copy {n} bytes from {src} to {at}"
    n = rng.choice([8, 64, 512])
    buf[at:at + n] = bytes(len(buf[at:at + n]))
    return bytes(buf), f"zero {n} bytes at {at}"


# -- the manifest (JSON) ------------------------------------------------------------------------------------

_HUGE_DIMS = [[2**40], [2**38, 4], [-1], [1] * 70, [2**62, 2**62], [2**31, 2**31], [0], [], [2**64],
              [1.5], ["3"], None, [2**63 - 1]]


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutate_manifest(text: str, rng: random.Random) -> tuple[str, str]:
    """A manifest JSON with one field rewritten: shapes, dtypes, names, ties, views, checksums, structure."""
    try:
        m = json.loads(text)
    except ValueError:
        return text[: len(text) // 2], "manifest cut"
    if not isinstance(m, dict):
        return deep_json(10_000), "manifest deeply nested"
    tensors = m.get("tensors") or []
    names = [t.get("name") for t in tensors if isinstance(t, dict)]
    op = rng.choice(["tensor", "tensor", "tensor", "view", "tie", "tie", "metadata", "top", "deep", "order"])
    if op == "tensor" and tensors:
        t = rng.choice(tensors)
        key = rng.choice(["name", "dtype", "shape", "shape", "kind", "requires_grad", "checksum"])
        values = {
            "name": [rng.choice(names), "", "x" * 5000, "grad/x", "../../etc/passwd", "a/b", "\x00", "\udcff"],
            "dtype": ["float128", "bfloat16", "float32", "int8", "bool", "complex128", 3, None],
            "shape": _HUGE_DIMS + [list(reversed(t.get("shape") or [])), (t.get("shape") or []) + [1]],
            "kind": ["gradient", "constant", "buffer", "bogus", None],
            "requires_grad": [True, "yes", None],
            "checksum": ["xxh3_64:" + "0" * 16, "sha256:" + "f" * 64, "md5:00", None, ""],
        }[key]
        t[key] = rng.choice(values)
        return json.dumps(m), f"manifest tensor {key} -> {str(t[key])[:40]}"
    if op == "view":
        base = rng.choice(names + ["nope"]) if names else "nope"
        view = {"name": f"v{rng.randrange(99)}", "base": base, "offset": rng.choice([0, 1, 2**40, -1]),
                "shape": rng.choice([[2**40], [3], [2, 2], [2**20, 2**20]]), "stride": rng.choice([[0], [1], [2**40]])}
        if len(view["stride"]) != len(view["shape"]):
            view["stride"] = [rng.choice([0, 1])] * len(view["shape"])
        m.setdefault("views", []).append(view)
        return json.dumps(m), f"manifest view {view}"
    if op == "tie":
        canonical = rng.choice(names + ["nope"]) if names else "nope"
        aliases = rng.choice([[rng.choice(names)] if names else [], ["new"], ["new", "new"], []])
        m.setdefault("ties", []).append({"canonical": canonical, "aliases": aliases})
        return json.dumps(m), f"manifest tie {canonical} <- {aliases}"
    if op == "metadata":
        m["metadata"] = rng.choice([{"k": 1}, {"k": None}, {"k" * 100_000: "v"}, [], {"ü": "\udcff"}])
        return json.dumps(m), "manifest metadata"
    if op == "top":
        key = rng.choice(list(m) + ["bogus"])
        if rng.random() < 0.5:
            m.pop(key, None)
        else:
            m[key] = rng.choice([None, {}, [], 7, "paramio.manifest/2", deep_json(3)])
        return json.dumps(m), f"manifest top-level {key}"
    if op == "deep":
        return '{"tensors": ' + deep_json(rng.choice([100, 10_000, 200_000])) + "}", "manifest deep nesting"
    if tensors:
        rng.shuffle(tensors)
    return json.dumps(m, ensure_ascii=False), "manifest tensors reordered"


# -- structural mutations, per format -----------------------------------------------------------------------


class Skip(Exception):
    """The mutation does not apply to this seed (e.g. it has no manifest)."""


#: What every file outside the checkpoint holds: a loaded tensor containing it read outside the file.
SECRET = b"SECRET"


def _outside(case: Path, size: int = 4096) -> Path:
    """A file outside the checkpoint's folder that a hostile file may point to."""
    target = case / "outside.bin"
    if not target.exists():
        target.write_bytes(SECRET + bytes(size - len(SECRET)))
    return target


# safetensors


def _st_split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _st_join(header: dict | bytes, rest: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header, ensure_ascii=False).encode("utf-8",
                                                                                                 "surrogatepass")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + rest


def _mutate_safetensors(path: Path, case: Path, rng: random.Random) -> str:
    header, rest = _st_split(path.read_bytes())
    names = [k for k in header if k != "__metadata__"]
    op = rng.choice(["field", "field", "field", "huge", "dup", "meta", "manifest", "manifest", "deep",
                     "utf8", "add", "drop"])
    if op == "field" and names:
        name, key = rng.choice(names), rng.choice(["dtype", "shape", "shape", "data_offsets", "data_offsets"])
        entry = header[name]
        begin, end = entry["data_offsets"]
        values = {
            "dtype": ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "C64", "I64", "I8", "U64", "BOOL",
                      "F128", "", None, 5],
            "shape": _HUGE_DIMS + [[end - begin], [0], "x"],
            "data_offsets": [[0, 2**40], [-8, 0], [begin, end + 1], [end, begin], [begin], "x",
                             [begin + 1, end + 1], [begin, begin], [2**64, 2**64 + 4], [begin, 2**63], None],
        }[key]
        entry[key] = rng.choice(values)
        path.write_bytes(_st_join(header, rest))
        return f"safetensors {name}.{key} -> {entry[key]}"
    if op == "huge" and names:
        name = rng.choice(names)
        begin = header[name]["data_offsets"][0]
        header[name] = {"dtype": "F32", "shape": [2**38], "data_offsets": [begin, begin + 2**40]}
        path.write_bytes(_st_join(header, rest))
        return f"safetensors {name} declares 1 TiB"
    if op == "dup" and names:
        name = rng.choice(names)
        text = json.dumps(header)
        twin = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})[1:-1]
        path.write_bytes(_st_join(("{" + twin + "," + text[1:]).encode(), rest))
        return f"safetensors duplicate key {name}"
    meta = header.get("__metadata__") or {}
    if op == "meta":
        choice = rng.choice(["alias", "self", "missing", "nonstr", "list", "format"])
        if choice == "alias" and names:
            meta[f"alias{rng.randrange(9)}"] = rng.choice(names)
        elif choice == "self" and len(names) >= 2:
            meta[names[0]] = names[1]
        elif choice == "missing":
            meta[rng.choice(names) if names else "x"] = "nope"
        elif choice == "nonstr":
            meta["k"] = rng.choice([1, None, [], {}])
        elif choice == "list":
            meta = ["x"]
        else:
            meta["format"] = "tf"
        header["__metadata__"] = meta
        path.write_bytes(_st_join(header, rest))
        return f"safetensors metadata {choice}"
    if op == "manifest":
        if "paramio.manifest" not in meta:
            raise Skip("no manifest")
        meta["paramio.manifest"], what = mutate_manifest(meta["paramio.manifest"], rng)
        path.write_bytes(_st_join(header, rest))
        return f"safetensors {what}"
    if op == "deep":
        path.write_bytes(_st_join(('{"a": ' + deep_json(rng.choice([64, 5000, 100_000])) + "}").encode(), rest))
        return "safetensors deeply nested header"
    if op == "utf8":
        text = json.dumps(header).encode()
        at = rng.randrange(len(text))
        path.write_bytes(_st_join(text[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + text[at:],
                                  rest))
        return f"safetensors non-UTF-8 byte at {at}"
    if op == "add":
        size = len(rest)
        begin = rng.choice([0, size, max(0, size - 4)])
        header[f"extra{rng.randrange(9)}"] = {"dtype": "U8", "shape": [4], "data_offsets": [begin, begin + 4]}
        path.write_bytes(_st_join(header, rest + (b"\0" * 4 if begin == size else b"")))
        return f"safetensors extra entry at {begin}"
    if names:
        header.pop(rng.choice(names))
    path.write_bytes(_st_join(header, rest))
    return "safetensors entry dropped"


# hdf5


def _mutate_hdf5(path: Path, case: Path, rng: random.Random) -> str:
    import h5py
    import numpy as np

    op = rng.choice(["external-link", "vds", "external-storage", "soft-link", "group-cycle", "replace",
                     "replace", "huge", "bomb", "manifest", "manifest", "attr-dtype", "deep", "many", "delete",
                     "null", "big-endian", "external-group", "soft-via-external"])
    with h5py.File(path, "r+") as f:
        root = f["tensors"] if "tensors" in f else f
        datasets = [k for k in root if isinstance(root.get(k, getlink=True), h5py.HardLink)
                    and isinstance(root[k], h5py.Dataset)]
        name = rng.choice(datasets) if datasets else "x"
        target = rng.choice([name, f"new{rng.randrange(9)}"])
        if op in ("external-link", "vds") and target in root:
            del root[target]
        outside_h5 = case / "outside.h5"
        if op in ("external-link", "vds", "external-group", "soft-via-external"):
            _outside_hdf5(outside_h5)
        if op == "external-group":  # a whole group read from another file (or a FIFO, which blocks an open)
            group = rng.choice(["tensors", "grads"])
            if group in f:
                del f[group]
            fifo = case / "pipe.h5"
            if not fifo.exists():
                os.mkfifo(fifo)
            where = rng.choice([str(outside_h5), "../outside.h5", str(fifo), "../pipe.h5"])
            f[group] = h5py.ExternalLink(where, f"/{group}")
            op += f" /{group} -> {where}"
        elif op == "soft-via-external":  # a soft link whose path goes through an external link at the root
            f["ext"] = h5py.ExternalLink(str(outside_h5), "/")
            if rng.random() < 0.5:
                del f["tensors"]
                f["tensors"] = h5py.SoftLink("/ext/tensors")
            else:
                if target in root:
                    del root[target]
                root[target] = h5py.SoftLink(rng.choice(["/ext/data", "/ext/tensors/x"]))
        elif op == "external-link":
            where = rng.choice([str(outside_h5), "../outside.h5", "outside.h5"])
            root[target] = h5py.ExternalLink(where, "/data")
        elif op == "vds":
            layout = h5py.VirtualLayout(shape=(6,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(outside_h5), "data", shape=(6,))
            root.create_virtual_dataset(target, layout)
        elif op == "external-storage":
            outside = _outside(case)
            if target in root:
                del root[target]
            root.create_dataset(target, shape=(16,), dtype="f4", external=[(str(outside), 0, 64)])
        elif op == "soft-link":
            if target in root:
                del root[target]
            root[target] = h5py.SoftLink(rng.choice([f"/tensors/{name}", "/nowhere", "/", "/tensors", "/grads"]))
        elif op == "group-cycle":
            root[f"g{rng.randrange(9)}"] = f["/"]
        elif op == "replace" and datasets:
            del root[name]
            dtype = rng.choice(["<f4", ">f4", ">i8", "<f2", "S5", "u1", "?", "<c8", "i1",
                                h5py.string_dtype(), h5py.vlen_dtype("f4"), [("a", "f4"), ("b", "i4")]])
            shape = rng.choice([(2, 3), (), (0,), (5,), (3, 1, 2)])
            root.create_dataset(name, shape=shape, dtype=dtype)
            op += f" {dtype} {shape}"
        elif op == "huge":
            if target in root:
                del root[target]
            shape = rng.choice([(2**38,), (2**20, 2**20), (2**50,)])
            chunks = rng.choice([None, (64,) * len(shape)])
            root.create_dataset(target, shape=shape, dtype="f4", chunks=chunks)
            op += f" {shape} chunks={chunks}"
        elif op == "bomb":
            if target in root:
                del root[target]
            root.create_dataset(target, data=np.zeros(2**24, dtype="f4"), chunks=(2**20,), compression="gzip")
        elif op == "manifest":
            text = f.attrs.get("paramio.manifest")
            if text is None:
                raise Skip("no manifest")
            text = text.decode() if isinstance(text, bytes) else str(text)
            choice = rng.random()
            if choice < 0.7:
                value, what = mutate_manifest(text, rng)
                f.attrs["paramio.manifest"] = value.encode("utf-8", "surrogatepass")
                op = what
            elif choice < 0.8:
                f.attrs["paramio.manifest"] = np.void(b"\xff\xfe" + text.encode()[:50])
            elif choice < 0.9:
                f.attrs["paramio.manifest"] = np.arange(3)
            else:
                f.attrs["paramio.manifest"] = b"\xff\xfe not utf-8"
        elif op == "attr-dtype" and datasets:
            root[name].attrs["dtype"] = rng.choice(["float128", "bfloat16", "float8_e5m2", "", 5, b"\xff"])
        elif op == "deep":
            group = root.create_group(f"deep{rng.randrange(9)}")
            for i in range(rng.choice([40, 200])):
                group = group.create_group(f"l{i}")
            group["x"] = np.ones(2, dtype="f4")
        elif op == "many":
            group = root.create_group("many")
            for i in range(rng.choice([100, 400])):
                group.create_dataset(f"t{i}", data=np.zeros(1, dtype="u1"))
        elif op == "delete" and datasets:
            del root[name]
        elif op == "null":
            if target in root:
                del root[target]
            root.create_dataset(target, data=h5py.Empty("f4"))
        elif op == "big-endian" and datasets:
            data = root[name][()]
            del root[name]
            root.create_dataset(name, data=np.asarray(data).astype(np.asarray(data).dtype.newbyteorder(">")))
    return f"hdf5 {op} {name}"


def _outside_hdf5(path: Path) -> None:
    """An HDF5 file in paramio's layout holding the secret, read through libhdf5 (chunked) and mappable."""
    import h5py
    import numpy as np

    secret = np.frombuffer(SECRET * 4, dtype=np.uint8)
    with h5py.File(path, "w") as out:
        out["data"] = secret
        for group in ("tensors", "grads"):
            out.create_group(group).create_dataset("x", data=secret, chunks=(8,))


# onnx


def _mutate_onnx(path: Path, case: Path, rng: random.Random) -> str:
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(path.read_bytes())
    inits = list(model.graph.initializer)
    init = rng.choice(inits) if inits else None
    op = rng.choice(["dims", "dims", "dtype", "raw", "typed", "external", "external", "external", "dup",
                     "manifest", "manifest", "graph", "deep", "name", "segment", "string"])
    what = op
    if op == "dims" and init is not None:
        dims = rng.choice([[2**40], [-1], [1] * 70, [2**62, 2**62], [0], [], list(reversed(init.dims)),
                           list(init.dims) + [2], [2**31, 2**31, 4]])
        del init.dims[:]
        init.dims.extend(dims)
        what = f"dims of {init.name} -> {dims[:4]}"
    elif op == "dtype" and init is not None:
        init.data_type = rng.choice(list(range(0, 24)) + [100, 2**31 - 1])
        what = f"data_type of {init.name} -> {init.data_type}"
    elif op == "raw" and init is not None:
        raw = init.raw_data
        init.raw_data = rng.choice([raw[: len(raw) // 2], raw + b"\0" * 7, b"", raw[:-1]])
        what = f"raw_data of {init.name} -> {len(init.raw_data)} bytes"
    elif op == "typed" and init is not None:
        init.ClearField("raw_data")
        field = rng.choice(["float_data", "int32_data", "int64_data", "double_data", "uint64_data"])
        getattr(init, field).extend([1] * rng.choice([0, 1, 3, 1000]))
        what = f"{init.name} values in {field}"
    elif op == "external" and init is not None:
        where = case / MODEL_DIR
        outside = _outside(case, 2**16)
        link = where / "link.bin"
        if not link.exists():
            link.symlink_to(Path("..") / outside.name)
        inside = where / "inside.bin"
        inside.write_bytes(bytes(2**12))
        location = rng.choice([str(outside), "../outside.bin", "link.bin", "missing.bin", "", "sub/../../outside.bin",
                               path.name, "/dev/zero", "inside.bin", "inside.bin", ".", "/proc/self/environ"])
        offset = rng.choice(["0", "0", "-1", str(2**40), "abc", "1e3", "", "4096"])
        length = rng.choice([None, str(len(init.raw_data)), str(2**40), "-5", "x", "4096", "0"])
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            if value is not None:
                entry = init.external_data.add()
                entry.key, entry.value = key, value
        if rng.random() < 0.2:
            entry = init.external_data.add()
            entry.key, entry.value = "location", "inside.bin"
        what = f"external data of {init.name}: {location} @{offset}+{length}"
    elif op == "dup" and init is not None:
        model.graph.initializer.add().CopyFrom(init)
        what = f"duplicate initializer {init.name}"
    elif op == "manifest":
        props = [p for p in model.metadata_props if p.key == "paramio.manifest"]
        if not props:
            raise Skip("no manifest")
        choice = rng.random()
        if choice < 0.8:
            props[0].value, what = mutate_manifest(props[0].value, rng)
        else:
            extra = model.metadata_props.add()
            extra.key, extra.value = "paramio.manifest", props[0].value
            what = "manifest twice"
    elif op == "graph":
        choice = rng.choice(["outputs", "node", "nograph", "input"])
        if choice == "outputs":
            del model.graph.output[:]
        elif choice == "node":
            model.graph.node.add().CopyFrom(onnx.helper.make_node("Add", ["missing", "x"], ["y"]))
        elif choice == "nograph":
            model.ClearField("graph")
        else:
            model.graph.input.add().CopyFrom(onnx.helper.make_tensor_value_info(
                inits[0].name if inits else "a", onnx.TensorProto.FLOAT, [2]))
        what = f"graph {choice}"
    elif op == "deep":  # encoded by hand: protobuf itself refuses to build more than 100 levels
        depth = rng.choice([20, 200, 5000])
        path.write_bytes(path.read_bytes() + _pb(7, _pb(1, _nested_node(depth))))  # a second graph field
        return f"onnx subgraphs nested {depth} deep"
    elif op == "name" and init is not None:
        init.name = rng.choice(["", "x" * 10_000, inits[0].name, "grad/", "a\udcff".encode("utf-8", "surrogatepass")
                                .decode("utf-8", "replace")])
        what = f"initializer renamed to {init.name[:20]!r}"
    elif op == "segment" and init is not None:
        init.segment.begin, init.segment.end = rng.choice([(0, 2**40), (5, 1), (-1, 3)])
        what = f"segment of {init.name}"
    elif op == "string" and init is not None:
        init.data_type = onnx.TensorProto.STRING
        init.ClearField("raw_data")
        init.string_data.extend([b"\xff" * 10] * 3)
        what = f"{init.name} as strings"
    else:
        raise Skip(f"onnx {op}: no initializer")
    path.write_bytes(model.SerializeToString())
    return f"onnx {what}"


def _pb(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _nested_node(depth: int) -> bytes:
    """An If node whose then_branch holds an If node ... ``depth`` levels down (NodeProto bytes)."""
    node = _pb(4, b"If")
    for _ in range(depth):
        attribute = _pb(1, b"then_branch") + _pb(6, _pb(1, node)) + b"\xa0\x01\x05"  # type (20) = GRAPH
        node = _pb(4, b"If") + _pb(5, attribute)
    return node


# torch


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info.filename)) for info in z.infolist()]


def zip_build(members: list[tuple[str, bytes]]) -> bytes:
    """A zip laid out like torch.save's: stored, each record's data aligned to 64 bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            start = out.tell() + 30 + len(name.encode()) + 4
            pad = -start % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, data)
    return out.getvalue()


_BOMB_BLOCK = 1 << 24


def deflate_bomb(inflated: int) -> bytes:
    """A raw deflate stream of ``inflated`` zero bytes (a multiple of 16 MiB) about a thousandth of that size,
    made without compressing them all: after a full flush, every 16 MiB block of zeros compresses the same."""
    import zlib

    assert inflated % _BOMB_BLOCK == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(_BOMB_BLOCK)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (inflated // _BOMB_BLOCK - 1) + c.flush()


def zip_with_bomb(members: list[tuple[str, bytes]], name: str, inflated: int, crc: int = 0) -> bytes:
    """``zip_build(members)`` with member ``name`` replaced by a deflated record of ``inflated`` zero bytes
    (its sizes declared honestly in both headers; ``crc`` as given, computing it costs a second per GiB)."""
    bomb = deflate_bomb(inflated)
    data = bytearray(zip_build([(n, bomb if n == name else d) for n, d in members]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo(name)
    local = info.header_offset
    struct.pack_into("<H", data, local + 8, zipfile.ZIP_DEFLATED)
    struct.pack_into("<III", data, local + 14, crc, len(bomb), inflated)
    central = next(at for at in _find_all(data, b"PK\x01\x02")
                   if data[at + 46:at + 46 + len(name.encode())] == name.encode())
    struct.pack_into("<H", data, central + 10, zipfile.ZIP_DEFLATED)
    struct.pack_into("<III", data, central + 16, crc, len(bomb), inflated)
    return bytes(data)


def _find_all(data: bytes | bytearray, needle: bytes) -> Iterator[int]:
    at = data.find(needle)
    while at >= 0:
        yield at
        at = data.find(needle, at + 1)


EVIL = ("exec", "system", "eval", "subprocess", "getattr")


def evil_pickle(marker: Path, choice: str) -> bytes:
    """Pickles that would run code (create the marker file) if anything unpickled them unrestricted."""
    command = f"open({str(marker)!r}, 'w').close()"
    shell = f"touch {marker}"
    if choice == "exec":
        return b"\x80\x02cbuiltins\nexec\nq\x00X" + struct.pack("<I", len(command)) + command.encode() + b"\x85R."
    if choice == "eval":
        return b"\x80\x02c__builtin__\neval\nX" + struct.pack("<I", len(command)) + command.encode() + b"\x85R."
    if choice == "system":
        return b"cos\nsystem\n(V" + shell.encode() + b"\ntR."
    if choice == "subprocess":
        return b"csubprocess\ncall\n((V" + shell.encode().replace(b" ", b"\nV", 1) + b"\nltR."
    return (b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nVos\n\x85R" + b"Vsystem\n\x86R"
            + b"V" + shell.encode() + b"\n\x85R.")


def _pickle_ints(data: bytes) -> list[tuple[int, int, str]]:
    """(position, width, opcode) of each integer argument in a pickle."""
    import pickletools

    out = []
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("BININT1", "BININT2", "BININT", "LONG1"):
                width = {"BININT1": 1, "BININT2": 2, "BININT": 4}.get(op.name, data[pos + 1] if pos + 1 < len(data)
                                                                       else 0)
                start = pos + (2 if op.name == "LONG1" else 1)
                out.append((start, width, op.name))
    except Exception:  # noqa: BLE001 - a damaged pickle has fewer ints to mutate
        pass
    return out


def _pickle_strings(data: bytes) -> list[tuple[int, int]]:
    """(position, length) of each short string argument in a pickle."""
    import pickletools

    out = []
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("BINUNICODE", "SHORT_BINUNICODE") and isinstance(arg, str):
                head = 5 if op.name == "BINUNICODE" else 2
                out.append((pos + head, len(arg.encode())))
    except Exception:  # noqa: BLE001
        pass
    return out


def _mutate_torch(path: Path, case: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        if rng.random() < 0.5:
            path.write_bytes(evil_pickle(case / MARKER, rng.choice(EVIL)))
            return "legacy evil pickle"
        raise Skip("legacy file")
    members = zip_members(data)
    index = {name: i for i, (name, _) in enumerate(members)}
    pkl = next((n for n in index if n.endswith("/data.pkl")), None)
    if pkl is None:
        raise Skip("no data.pkl")
    prefix = pkl[: -len("data.pkl")]
    op = rng.choice(["evil", "int", "int", "int", "string", "string", "bytes", "record-size", "record-drop",
                     "record-dup", "byteorder", "version", "manifest", "repeat", "bomb", "deflate"])
    body = members[index[pkl]][1]
    what = op
    if op == "repeat":  # a tensor re-saved with more elements than its storage (stride 0, overlapping rows)
        return _repeat_tensor(path, data, rng)
    if op == "bomb":  # data.pkl deflated from 2 GiB of zeros: 2 MB on disk
        path.write_bytes(zip_with_bomb(members, pkl, 2**31))
        return "torch data.pkl inflates to 2 GiB"
    if op == "deflate":  # every record compressed (tensor data can no longer be mapped)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, member in members:
                z.writestr(name, member)
        path.write_bytes(out.getvalue())
        return "torch records deflated"
    if op == "evil":
        body = evil_pickle(case / MARKER, rng.choice(EVIL))
    elif op == "int":
        ints = _pickle_ints(body)
        if not ints:
            raise Skip("no ints")
        at, width, name = rng.choice(ints)
        if width in (1, 2, 4):
            value = rng.choice(_INTERESTING + [0, 1, 2**31 - 1]) % (1 << (8 * width))
            if width == 4 and rng.random() < 0.3:
                value = (-rng.choice([1, 2, 2**31])) % 2**32
            body = body[:at] + value.to_bytes(width, "little") + body[at + width:]
            what = f"pickle {name} at {at} -> {value}"
    elif op == "string":
        strings = _pickle_strings(body)
        if not strings:
            raise Skip("no strings")
        at, n = rng.choice(strings)
        old = body[at:at + n]
        candidates = [b"cuda", b"meta", b"DoubleStorage", b"BogusStorage", b"999", b"../x", b"", b"\xff\xfe",
                      b"os", b"system", b"_rebuild_parameter", old + b"x"]
        new = rng.choice(candidates)
        head = 5 if at >= 5 and body[at - 5] == ord("X") else 2
        if head == 5:
            body = body[:at - 4] + struct.pack("<I", len(new)) + new + body[at + n:]
        else:
            body = body[:at - 1] + bytes([min(len(new), 255)]) + new[:255] + body[at + n:]
        what = f"pickle string {old[:20]!r} -> {new!r}"
    elif op == "bytes":
        for _ in range(rng.choice([1, 2, 3])):
            body, _ = _byte_mutation(body, rng, [])
    elif op == "manifest":
        match = re.search(rb'\{"schema_version":"paramio\.manifest/1"', body)
        if not match:
            raise Skip("no manifest")
        start = match.start()
        head = body[start - 5:start]
        if head[:1] != b"X":
            raise Skip("manifest not a BINUNICODE")
        (n,) = struct.unpack("<I", head[1:])
        text, what = mutate_manifest(body[start:start + n].decode(), rng)
        raw = text.encode("utf-8", "surrogatepass")
        body = body[:start - 4] + struct.pack("<I", len(raw)) + raw + body[start + n:]
    records = [n for n in index if n.startswith(prefix + "data/")]
    if op == "record-size" and records:
        name = rng.choice(records)
        old = members[index[name]][1]
        members[index[name]] = (name, rng.choice([old[: len(old) // 2], old + bytes(8), b"", old[:-1]]))
        what = f"record {name} resized"
    elif op == "record-drop" and records:
        name = rng.choice(records)
        members.pop(index[name])
        index = {n: i for i, (n, _) in enumerate(members)}
        what = f"record {name} dropped"
    elif op == "record-dup" and records:
        name = rng.choice(records)
        members.append((name, b"\0" * 8))
        what = f"record {name} twice"
    elif op in ("byteorder", "version"):
        name = prefix + op
        value = rng.choice([b"big", b"99", b"", b"\xff", b"1"])
        if name in index:
            members[index[name]] = (name, value)
        what = f"{op} -> {value!r}"
    members[index[pkl]] = (pkl, body)
    path.write_bytes(zip_build(members))
    return f"torch {what}"


def _repeat_tensor(path: Path, data: bytes, rng: random.Random) -> str:
    """The file saved again with one tensor replaced by one whose elements repeat: a stride-0 expand of one
    element to 2**40, or 2**16 rows overlapping in a 2**17-element storage; the manifest (if any) may be
    edited to match."""
    import torch

    state = torch.load(io.BytesIO(data), weights_only=True)
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
    if not names:
        raise Skip("no floating tensor")
    name = rng.choice(names)
    dtype = state[name].dtype
    if rng.random() < 0.5:
        state[name] = torch.zeros(1, dtype=dtype).expand(2**20, 2**20)
    else:
        state[name] = torch.zeros(2**17, dtype=dtype).as_strided((2**16, 2**16), (1, 1))
    meta = getattr(state, "_metadata", None)
    if isinstance(meta, dict) and isinstance(meta.get("paramio.manifest"), str) and rng.random() < 0.7:
        manifest = json.loads(meta["paramio.manifest"])
        for entry in manifest.get("tensors", []):
            if entry.get("name") == name:
                entry["shape"] = list(state[name].shape)
        meta["paramio.manifest"] = json.dumps(manifest)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    return f"torch {name} repeats: shape {list(state[name].shape)} strides {list(state[name].stride())}"


# sharded folders


def _index_of(folder: Path) -> Path:
    return next(folder.glob("*.index.json"))


def _mutate_folder(folder: Path, case: Path, rng: random.Random) -> str:
    """Rewrite the index (shard names outside the folder, symlinks, missing or misplaced tensors, duplicate
    keys, lies about total_size, the manifest) or the shards (missing, swapped, replaced by a folder)."""
    index = _index_of(folder)
    doc = json.loads(index.read_text())
    weight_map, meta = doc["weight_map"], doc.setdefault("metadata", {})
    shards = sorted(set(weight_map.values()))
    name = rng.choice(list(weight_map))
    op = rng.choice(["name", "name", "name", "symlink", "missing", "ghost", "move", "duplicate", "total",
                     "manifest", "manifest", "swap", "dir", "garbage", "alias"])
    if op == "name":
        outside = _outside(case)
        weight_map[name] = rng.choice([str(outside), "../outside.bin", f"../{MODEL_DIR}/../outside.bin",
                                       "/etc/passwd", "", ".", "sub/../../outside.bin", "a\\b.safetensors",
                                       index.name, "x" * 5000, "\x00.bin", "/dev/zero"])
    elif op == "symlink":
        target = rng.choice(shards)
        (folder / target).unlink()
        (folder / target).symlink_to(rng.choice([_outside(case), Path("/dev/zero"), folder, folder / target]))
        return f"folder: {target} symlinked away"
    elif op == "missing":
        (folder / rng.choice(shards)).unlink()
        return "folder: a shard removed"
    elif op == "ghost":
        weight_map[rng.choice(["ghost", name + ".x"])] = rng.choice(shards)
    elif op == "move":
        weight_map[name] = rng.choice(shards)
    elif op == "duplicate":
        text = index.read_text().replace('"weight_map": {', f'"weight_map": {{"{name}": "{rng.choice(shards)}", ', 1)
        index.write_text(text)
        return f"folder: `{name}` listed twice"
    elif op == "total":
        meta["total_size"] = rng.choice([0, 1, -1, 2**64, 2**40, "12", None, 1.5, True])
    elif op == "manifest":
        if "paramio.manifest" not in meta:
            raise Skip("the index has no manifest")
        meta["paramio.manifest"], what = mutate_manifest(meta["paramio.manifest"], rng)
        index.write_text(json.dumps(doc))
        return f"folder index {what}"
    elif op == "swap" and len(shards) > 1:
        a, b = rng.sample(shards, 2)
        (folder / a).rename(folder / "tmp")
        (folder / b).rename(folder / a)
        (folder / "tmp").rename(folder / b)
        return f"folder: {a} and {b} swapped"
    elif op == "dir":
        target = rng.choice(shards)
        (folder / target).unlink()
        (folder / target).mkdir()
        return f"folder: {target} is a folder"
    elif op == "garbage":
        index.write_bytes(rng.choice([b"", b"{", deep_json(100_000).encode(), b"\xff" * 9, b"[]", b"null",
                                      b'{"weight_map": {"a": 1}}', b'{"weight_map": [], "metadata": 3}']))
        return "folder: index replaced"
    else:
        meta[rng.choice(["alias", name])] = rng.choice([name, "nope", 3, None])
    index.write_text(json.dumps(doc))
    return f"folder index {op} ({name[:40]})"


STRUCTURAL: dict[str, Callable[[Path, Path, random.Random], str]] = {
    "folder": _mutate_folder,
    "safetensors": _mutate_safetensors,
    "hdf5": _mutate_hdf5,
    "onnx": _mutate_onnx,
    "torch": _mutate_torch,
}


# -- one case -----------------------------------------------------------------------------------------------


def case_rng(base_seed: int, fmt: str, case: int) -> random.Random:
    return random.Random(f"{base_seed}:{fmt}:{case}")


def make_case(fmt: str, seed: Path, rng: random.Random, case: Path) -> tuple[Path, list[str]]:
    """Copy ``seed`` into ``case/model`` and mutate it; return the main file and what was done."""
    note = json.loads((seed / "seed.json").read_text())
    where = case / MODEL_DIR
    shutil.copytree(seed / MODEL_DIR, where, symlinks=True)
    main = where / note["main"]
    count = rng.choice([1, 1, 1, 1, 2, 2, 3, 4])
    structural = sum(rng.random() < 0.55 for _ in range(count))
    done = []
    for _ in range(structural):
        try:
            done.append(STRUCTURAL[fmt](main, case, rng))
        except Skip as e:
            done.append(f"skipped: {e}")
        except Exception as e:  # noqa: BLE001 - a structural edit of a damaged seed may fail; go on
            done.append(f"structural edit failed: {type(e).__name__}")
    files = sorted(p for p in where.iterdir() if p.is_file() and not p.is_symlink())
    for _ in range(count - structural):
        if main.is_dir():  # a folder: its index or one of its shards
            if not files:
                break
            index = [p for p in files if p.name.endswith(".index.json")]
            target = index[0] if index and rng.random() < 0.5 else rng.choice(files)
            data, what = _byte_mutation(target.read_bytes(), rng, [])
            target.write_bytes(data)
            done.append(f"{target.name}: {what}")
            continue
        target = main if rng.random() < 0.85 or len(files) < 2 else rng.choice(files)
        data = target.read_bytes()
        hot = _hot(data, [tuple(r) for r in note["data"]]) if target == main else []
        data, what = _byte_mutation(data, rng, hot)
        target.write_bytes(data)
        done.append(f"{target.name}: {what}")
    return main, done


# -- the checks (run in a worker) ---------------------------------------------------------------------------

_ALLOC = re.compile(r"can't allocate|cannot allocate|bad_alloc|memory allocation failed|out of memory|"
                    r"MemoryError|Cannot allocate", re.I)
CHECKS = ("read_manifest", "load", "validate", "cli-inspect", "cli-inspect-stats", "cli-validate")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_memory(e: BaseException) -> bool:
    return any(isinstance(x, MemoryError) or _ALLOC.search(str(x)) for x in _chain(e))


def _small_bytes(tensor) -> bytes:
    """A small tensor's bytes (large ones are seeds' data, never an outside file's few bytes)."""
    import torch

    if tensor.numel() == 0 or tensor.numel() * tensor.element_size() > 1 << 20:
        return b""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _run_check(name: str, path: Path) -> tuple[str, str]:
    import paramio
    from paramio.errors import ParamioError

    try:
        if name == "read_manifest":
            paramio.read_manifest(path)
            return "ok", ""
        if name == "load":
            ck = paramio.load(path)
            leaked = next((n for n, t in ck.items() if SECRET in _small_bytes(t)), None)
            if leaked is not None:
                return "leak", f"tensor `{leaked}` holds bytes of a file outside the checkpoint"
            unverified = sum(t.checksum is None for t in ck.manifest.tensors)
            return ("ok" if not unverified else "ok-unverified"), f"{len(ck)} names"
        if name == "validate":
            report = paramio.validate(path)
            return ("ok" if report.ok else "finding"), (report.problems[0][:200] if report.problems else "")
        return _run_cli(name, path)
    except ParamioError as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _is_memory(e):
            return "memory", f"{type(e).__name__}: {text}"[:500]
        if (str(path) if path.is_dir() else path.name) not in str(e):  # a folder: it or a file in it
            return "unnamed", f"{type(e).__name__}: {text}"[:500]
        return "error", f"{type(e).__name__}: {text}"[:300]
    except BaseException as e:  # noqa: BLE001 - the point: anything else is a finding
        kind = "memory" if _is_memory(e) else "bug"
        return kind, "".join(traceback.format_exception(e, limit=-8))[-3000:]


_CLI: list = []


def _run_cli(name: str, path: Path) -> tuple[str, str]:
    """The command line on ``path``; the click command is built once (typer rebuilds it on every call)."""
    if not _CLI:
        import typer
        from click.testing import CliRunner

        from paramio.cli import app

        _CLI.extend([CliRunner(), typer.main.get_command(app)])
    runner, command = _CLI
    args = {"cli-inspect": ["inspect", str(path)], "cli-inspect-stats": ["inspect", "--stats", "--json", str(path)],
            "cli-validate": ["validate", str(path)]}[name]
    result = runner.invoke(command, args, prog_name="paramio")
    stderr = result.stderr if result.stderr_bytes is not None else ""
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    allowed = {0, 1, 2} if name == "cli-validate" else {0, 2}
    if result.exit_code in allowed and not escaped:
        if result.exit_code == 2 and path.name not in stderr:
            return "unnamed", stderr.strip()[:300]
        return ("ok" if result.exit_code == 0 else "error"), stderr.strip()[:200]
    text = f"exit {result.exit_code}: {stderr.strip()[:500]} {result.exception!r}"
    if escaped:
        text += "\n" + "".join(traceback.format_exception(result.exception, limit=-8))[-2000:]
    return ("memory" if _ALLOC.search(text) else "bug"), text


_RANK = {"ok": 0, "ok-unverified": 0, "finding": 1, "error": 1, "unnamed": 2, "bug": 3, "leak": 4, "memory": 4,
         "ran-code": 5}


def check_file(path: Path, marker: Path | None = None) -> dict:
    """Every read path on one file; the worst outcome, and each check's."""
    checks = {}
    for name in CHECKS:
        checks[name] = _run_check(name, path)
    worst = max((outcome for outcome, _ in checks.values()), key=lambda o: _RANK[o])
    if marker is not None and marker.exists():
        worst = "ran-code"
    return {"outcome": worst, "checks": checks}


# -- the worker process -------------------------------------------------------------------------------------


def _vm_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def cap_memory(mem_cap_mb: int) -> None:
    """Let this process map at most ``mem_cap_mb`` more than it does now (RLIMIT_AS)."""
    limit = (_vm_kb("VmSize") + mem_cap_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def worker_main(mem_cap_mb: int, rss_jump_mb: int) -> None:
    """Serve cases from stdin, one JSON line each, answering on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(1)
    import paramio  # noqa: F401
    import paramio.cli  # noqa: F401

    warm = Path(tempfile.mkdtemp(prefix="paramio-fuzz-warm-"))
    for fmt in json.loads(os.environ.get("PARAMIO_FUZZ_FORMATS", "[]")):
        try:
            paramio.save({"w": torch.ones(2)}, warm / f"w{SUFFIX[fmt]}")
            check_file(warm / f"w{SUFFIX[fmt]}")
        except Exception:  # noqa: BLE001 - warming up only
            pass
    shutil.rmtree(warm, ignore_errors=True)
    cap_memory(mem_cap_mb)
    print(json.dumps({"ready": True}), file=proto)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(serve(request, rss_jump_mb)), file=proto)


def serve(request: dict, rss_jump_mb: int = 512) -> dict:
    """One case: a mutation of a seed, or (with ``path``) a file made elsewhere."""
    if "path" in request:
        path = Path(request["path"])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        result = {**_identity(request), **check_file(path, path.parent / MARKER)}
        result["seconds"] = round(time.perf_counter() - start, 4)
        _peak(result, before, rss_jump_mb)
        return result
    fmt, number = request["fmt"], request["case"]
    case = Path(request["workdir"]) / f"{fmt}-{number}"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    result = {"fmt": fmt, "case": number, "seed": Path(request["seed"]).name}
    start = time.perf_counter()
    try:
        path, done = make_case(fmt, Path(request["seed"]), case_rng(request["base"], fmt, number), case)
    except Exception as e:  # noqa: BLE001
        result.update(outcome="skip", done=[f"mutation failed: {e!r}"], seconds=0.0, checks={})
        shutil.rmtree(case, ignore_errors=True)
        return result
    result["done"] = done
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result.update(check_file(path, case / MARKER))
    result["seconds"] = round(time.perf_counter() - start, 4)
    _peak(result, before, rss_jump_mb)
    shutil.rmtree(case, ignore_errors=True)
    return result


def _peak(result: dict, before: int, rss_jump_mb: int) -> None:
    jump = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    if jump > rss_jump_mb:
        result["outcome"] = "memory"
        result["checks"]["peak-rss"] = ("memory", f"peak RSS rose by {jump} MB")


# -- the pool (parent side) ---------------------------------------------------------------------------------


class _Worker:
    def __init__(self, cmd: list[str], env: dict, log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True)
        self.buffer = b""

    def wait_ready(self, startup: float = 180) -> _Worker:
        line = self.readline(time.monotonic() + startup)
        if not line or not json.loads(line).get("ready"):
            self.kill()
            raise RuntimeError(f"fuzz worker did not start; see {self.log}")
        return self

    def readline(self, deadline: float) -> bytes | None:
        """The next line, or None on EOF or when the deadline passes."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        return self.proc.wait()

    def tail(self) -> str:
        try:
            return self.log.read_bytes()[-1500:].decode(errors="replace")
        except OSError:
            return ""


class WorkerPool:
    """Worker processes that each run one case at a time; a dead or stuck worker is replaced."""

    def __init__(self, size: int, *, timeout: float, formats: list[str], log_dir: Path, mem_cap_mb: int = 1024,
                 rss_jump_mb: int = 512) -> None:
        self.timeout = timeout
        self.log_dir = log_dir
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "PARAMIO_FUZZ_FORMATS": json.dumps(formats)}
        self.cmd = [sys.executable, "-m", "tests.fuzzing", "--worker", "--mem-cap-mb", str(mem_cap_mb),
                    "--rss-jump-mb", str(rss_jump_mb)]
        self.spawned = 0
        self.workers = [w.wait_ready() for w in [self._start() for _ in range(size)]]

    def _start(self) -> _Worker:
        self.spawned += 1
        return _Worker(self.cmd, self.env, self.log_dir / f"worker-{self.spawned}.log")

    def _spawn(self) -> _Worker:
        return self._start().wait_ready()

    def map(self, requests: Iterable[dict]) -> Iterator[dict]:
        queue = collections.deque(requests)
        busy: dict[int, tuple[dict, float]] = {}
        while queue or busy:
            for slot, worker in enumerate(self.workers):
                if slot not in busy and queue:
                    request = queue.popleft()
                    worker.proc.stdin.write((json.dumps(request) + "\n").encode())
                    worker.proc.stdin.flush()
                    busy[slot] = (request, time.monotonic() + request.get("timeout", self.timeout))
            fds = {self.workers[s].proc.stdout.fileno(): s for s in busy}
            wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            ready = select.select(list(fds), [], [], wait)[0]
            for fd in ready:
                slot = fds[fd]
                request, deadline = busy[slot]
                worker = self.workers[slot]
                line = worker.readline(deadline)
                if line is None and worker.proc.poll() is None and time.monotonic() < deadline:
                    continue  # a partial line; wait for the rest
                del busy[slot]
                if line is not None:
                    yield json.loads(line)
                    continue
                code = worker.kill()
                outcome = "hang" if code == -9 and time.monotonic() >= deadline else "crash"
                yield {**_identity(request), "outcome": outcome, "checks": {},
                       "detail": f"worker exit code {code}: {worker.tail()}"}
                self.workers[slot] = self._spawn()
            now = time.monotonic()
            for slot, (request, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[slot]
                    self.workers[slot].kill()
                    yield {**_identity(request), "outcome": "hang", "checks": {},
                           "detail": f"no answer within {request.get('timeout', self.timeout):.0f} s"}
                    self.workers[slot] = self._spawn()

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.proc.stdin.close()
                worker.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                worker.kill()


def _identity(request: dict) -> dict:
    if "path" in request:
        return {"fmt": request["fmt"], "case": request["case"], "seed": request["path"]}
    return {"fmt": request["fmt"], "case": request["case"], "seed": Path(request["seed"]).name}


# -- a campaign ---------------------------------------------------------------------------------------------


def campaign(formats: list[str], cases: int | dict[str, int], *, base_seed: int, workdir: Path,
             pool: WorkerPool | None = None, workers: int = 2, timeout: float = 30.0, mem_cap_mb: int = 1024,
             progress: Callable[[int, int], None] | None = None,
             findings_dir: Path | None = None) -> dict[str, list[dict]]:
    """Run ``cases`` mutated files per format (in ``pool``, or a pool of its own); every result by format.
    With ``findings_dir``, each finding's file is written there again (``<format>-<case>/``)."""
    counts = cases if isinstance(cases, dict) else dict.fromkeys(formats, cases)
    seeds = write_seeds(workdir / "seeds", formats)
    requests = [
        {"fmt": fmt, "case": i, "seed": str(seeds[fmt][i % len(seeds[fmt])]), "base": base_seed,
         "workdir": str(workdir / "cases")}
        for i in range(max(counts.values(), default=0)) for fmt in formats if i < counts.get(fmt, 0)
    ]
    own = pool is None
    if pool is None:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        pool = WorkerPool(workers, timeout=timeout, formats=formats, log_dir=workdir / "logs", mem_cap_mb=mem_cap_mb)
    results: dict[str, list[dict]] = {fmt: [] for fmt in formats}
    try:
        for done, result in enumerate(pool.map(requests), 1):
            results[result["fmt"]].append(result)
            if findings_dir is not None and result["outcome"] in BAD:
                folder = findings_dir / f"{result['fmt']}-{result['case']}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                seed = seeds[result["fmt"]][result["case"] % len(seeds[result["fmt"]])]
                _, result["done"] = make_case(result["fmt"], seed, case_rng(base_seed, result["fmt"], result["case"]),
                                              folder)
            if progress is not None:
                progress(done, len(requests))
    finally:
        if own:
            pool.close()
    return results


def replay(fmt: str, case: int, base_seed: int, out: Path) -> tuple[Path, list[str]]:
    """Write out one case of a campaign (the same seeds and mutations) for a bug report."""
    seeds = write_seeds(out / "seeds", [fmt])
    seed = seeds[fmt][case % len(seeds[fmt])]
    folder = out / f"{fmt}-{case}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return make_case(fmt, seed, case_rng(base_seed, fmt, case), folder)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for fmt, rows in results.items():
        counts = collections.Counter(r["outcome"] for r in rows)
        times = [r.get("seconds", 0.0) for r in rows if "seconds" in r]
        messages = collections.Counter(
            re.sub(r"\d+", "N", detail.split(": ", 2)[-1])[:60]
            for r in rows for outcome, detail in r.get("checks", {}).values() if outcome == "error"
        )
        out[fmt] = {"cases": len(rows), **dict(sorted(counts.items())),
                    "max_seconds": max(times, default=0.0),
                    "mean_seconds": round(sum(times) / len(times), 4) if times else 0.0,
                    "distinct_errors": len(messages)}
    return out


def findings(results: dict[str, list[dict]]) -> list[dict]:
    return [r for rows in results.values() for r in rows if r["outcome"] in BAD]


def describe(finding: dict) -> str:
    bad = {k: v for k, v in finding.get("checks", {}).items() if v[0] in BAD}
    lines = [f"{finding['fmt']} case {finding['case']} (seed {finding['seed']}): {finding['outcome']}",
             f"  mutations: {finding.get('done')}"]
    if "detail" in finding:
        lines.append(f"  {finding['detail'][-1500:]}")
    for check, (outcome, detail) in bad.items():
        lines.append(f"  {check}: {outcome}: {detail[-1500:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzzing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="mutated files per format")
    parser.add_argument("--formats", default=None, help="comma-separated (default: every format present)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: random, printed)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--mem-cap-mb", type=int, default=1024, help="address space a case may add (RLIMIT_AS)")
    parser.add_argument("--rss-jump-mb", type=int, default=512, help="peak-RSS rise that counts as a finding")
    parser.add_argument("--json", type=Path, default=None, help="write the summary and findings here")
    parser.add_argument("--replay", default=None, metavar="FORMAT:CASE", help="write one case out and check it")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"),
                        help="folder for the findings (each file written again), the worker logs and --replay")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.mem_cap_mb, args.rss_jump_mb)
        return 0
    from .reliability import formats_present

    formats = args.formats.split(",") if args.formats else [*formats_present(), FOLDER]
    base = args.seed if args.seed is not None else random.randrange(2**31)
    if args.replay:
        fmt, _, case = args.replay.partition(":")
        path, done = replay(fmt, int(case), base, args.out)
        print(f"{path}\n  mutations: {done}")
        import paramio.cli  # noqa: F401 - imported before the cap, as in a worker

        cap_memory(args.mem_cap_mb)
        print(json.dumps(check_file(path, path.parent.parent / MARKER), indent=2))
        return 0
    print(f"fuzzing {', '.join(formats)}: {args.cases} cases each, seed {base}, {args.workers} workers", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="paramio-fuzz-"))
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 30 or done == total:
            last[0] = time.monotonic()
            print(f"  {done}/{total} cases, {time.monotonic() - started:.0f} s", flush=True)

    try:
        results = campaign(formats, args.cases, base_seed=base, workers=args.workers, timeout=args.timeout,
                           workdir=workdir, mem_cap_mb=args.mem_cap_mb, progress=progress,
                           findings_dir=args.out / "findings")
    finally:
        logs = args.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in (workdir / "logs").glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(results)
    bad = findings(results)
    print(f"seed {base}, {time.monotonic() - started:.0f} s")
    for fmt, row in summary.items():
        print(f"  {fmt:12s} " + ", ".join(f"{k}={v}" for k, v in row.items()))
    for finding in bad[:50]:
        print(describe(finding))
    if args.json:
        slow = sorted((r for rows in results.values() for r in rows), key=lambda r: -r.get("seconds", 0))[:10]
        args.json.write_text(json.dumps({"seed": base, "summary": summary, "findings": bad, "slowest": slow},
                                        indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
