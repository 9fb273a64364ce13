"""The operations being timed: each format's stock tool and paramio, save and load.

Every operation is split into ``prepare`` (untimed: build inputs, remove stale outputs) and the timed
call. Loads return the tensors; the worker touches every byte (sums each tensor once) inside the timed
region, for stock tools and paramio alike.

Stock tools get what they can store: ``safetensors.save_file`` and onnx refuse or duplicate shared
tensors, so they receive the dict without aliases (the bytes on disk are the same as paramio's);
``torch.save`` keeps the tie natively; plain h5py writes the alias as a hard link.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMATS", "SUFFIX", "LIMITS", "path_for", "prepare", "touch", "remove_outputs"]

FORMATS = ("safetensors", "hdf5", "onnx", "torch")
SUFFIX = {"safetensors": ".safetensors", "hdf5": ".h5", "onnx": ".onnx", "torch": ".pt", "raw": ".bin"}
#: The machine's own limits, measured on one buffer of the case's size (format "raw", side "machine").
LIMITS = ("write", "write_fsync", "readinto", "mmap_sum", "copy_fresh", "xxh3")


def path_for(folder: Path, case: str, fmt: str, side: str) -> Path:
    return Path(folder) / f"{case}.{side}{SUFFIX[fmt]}"


def touch(tensors: Iterable[torch.Tensor]) -> float:
    """Read every byte: sum each distinct tensor once (aliases are the same object), on one thread.

    One thread because torch's intra-op pool wakes its second thread for every mid-sized tensor, and on a
    busy machine each wake-up can wait a scheduler tick: a 9 MB sum then took 16 ms instead of 1, which
    would swamp what is being measured (the same for both tools, but as noise)."""
    seen: set[int] = set()
    total = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += float(t.sum())
    finally:
        torch.set_num_threads(threads)
    return total


def _dedup(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first name of each tensor object only (what a stock tool that cannot tie stores)."""
    seen: set[int] = set()
    out = {}
    for name, t in sd.items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


# -- stock tools ---------------------------------------------------------------------------------------
def _stock_safetensors_save(sd: Mapping[str, torch.Tensor], path: Path) -> Callable[[], Any]:
    from safetensors.torch import save_file

    tensors = _dedup(sd)
    return lambda: save_file(tensors, str(path))


def _stock_safetensors_load(path: Path) -> Callable[[], Any]:
    from safetensors.torch import load_file

    return lambda: load_file(str(path)).values()


def _stock_hdf5_save(sd: Mapping[str, torch.Tensor], path: Path) -> Callable[[], Any]:
    import h5py

    def run() -> None:
        with h5py.File(path, "w") as f:
            first: dict[int, str] = {}
            for name, t in sd.items():
                if id(t) in first:
                    f[name] = f[first[id(t)]]  # hard link: the same dataset under a second name
                    continue
                first[id(t)] = name
                f.create_dataset(name, data=t.numpy())

    return run


def _stock_hdf5_load(path: Path) -> Callable[[], Any]:
    import h5py

    def run() -> list[torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_object: dict[Any, torch.Tensor] = {}
        with h5py.File(path, "r") as f:
            for name in f:
                ds = f[name]
                if ds.id not in by_object:  # a hard link is read once
                    by_object[ds.id] = torch.from_numpy(ds[()])
                out[name] = by_object[ds.id]
        return list(out.values())

    return run


def _stock_onnx_save(sd: Mapping[str, torch.Tensor], path: Path) -> Callable[[], Any]:
    import onnx
    from onnx import helper, numpy_helper

    tensors = _dedup(sd)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing external data file

    def run() -> None:
        inits = [numpy_helper.from_array(t.numpy(), name=name) for name, t in tensors.items()]
        graph = helper.make_graph([], "weights", [], [], initializer=inits)
        model = helper.make_model(graph)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)

    return run


def _stock_onnx_load(path: Path) -> Callable[[], Any]:
    import onnx
    from onnx import numpy_helper

    def run() -> list[torch.Tensor]:
        model = onnx.load(str(path))
        return [torch.from_numpy(numpy_helper.to_array(init)) for init in model.graph.initializer]

    return run


def _stock_torch_save(sd: Mapping[str, torch.Tensor], path: Path) -> Callable[[], Any]:
    return lambda: torch.save(dict(sd), str(path))


def _stock_torch_load(path: Path, mmap: bool = False) -> Callable[[], Any]:
    return lambda: torch.load(str(path), weights_only=True, mmap=mmap).values()


# -- paramio -------------------------------------------------------------------------------------------
def _paramio_save(sd: Mapping[str, torch.Tensor], path: Path, durable: bool = True, **options: Any
                  ) -> Callable[[], Any]:
    import paramio

    return lambda: paramio.save(sd, path, durable=durable, **options)


def _paramio_load(path: Path, verify: bool) -> Callable[[], Any]:
    import paramio

    return lambda: paramio.load(path, verify=verify).values()


def _paramio_read_manifest(path: Path) -> Callable[[], Any]:
    import paramio

    return lambda: paramio.read_manifest(path)


def _paramio_inspect(path: Path) -> Callable[[], Any]:
    from typer.testing import CliRunner

    from paramio.cli import app

    runner = CliRunner()

    def run() -> None:
        result = runner.invoke(app, ["inspect", str(path)])
        if result.exit_code != 0:
            raise RuntimeError(f"paramio inspect exited {result.exit_code}: {result.output.strip()[-300:]}")

    return run


def _paramio_convert(src: Path, dst: Path) -> Callable[[], Any]:
    import paramio

    def run() -> None:
        dst.unlink(missing_ok=True)
        paramio.convert(src, dst)

    return run


_STOCK_SAVE = {"safetensors": _stock_safetensors_save, "hdf5": _stock_hdf5_save, "onnx": _stock_onnx_save,
               "torch": _stock_torch_save}
_STOCK_LOAD = {"safetensors": _stock_safetensors_load, "hdf5": _stock_hdf5_load, "onnx": _stock_onnx_load,
               "torch": _stock_torch_load}


def _limit(action: str, path: Path, nbytes: int) -> tuple[Callable[[], Any], bool]:
    """One machine limit: plain writes (with and without fsync), reads into a preallocated buffer, mapping
    and summing, copying into fresh memory, hashing. Reads use the file the write jobs left."""
    import xxhash

    if action in ("write", "write_fsync"):
        data = torch.ones(nbytes // 4).numpy()
        path.unlink(missing_ok=True)

        def write() -> None:
            with open(path, "wb") as fh:
                fh.write(data)
                if action == "write_fsync":
                    fh.flush()
                    os.fsync(fh.fileno())

        return write, False
    if action == "readinto":
        buf = torch.empty(nbytes // 4)
        view = memoryview(buf.numpy()).cast("B")

        def readinto() -> list[torch.Tensor]:
            with open(path, "rb", buffering=0) as fh:
                fh.readinto(view)
            return [buf]

        return readinto, True
    if action == "mmap_sum":
        def mapped() -> list[torch.Tensor]:
            with open(path, "rb") as fh:
                return [torch.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), dtype=torch.float32)]

        return mapped, True
    data = torch.ones(nbytes // 4)
    data.sum()
    if action == "copy_fresh":
        return (lambda: [data.clone()]), False
    if action == "xxh3":
        return (lambda: xxhash.xxh3_64_hexdigest(data.numpy())), False
    raise ValueError(f"no machine limit {action!r}")


def prepare(side: str, action: str, fmt: str, path: Path, make_dict: Callable[[], dict[str, torch.Tensor]],
            dst: Path | None = None, nbytes: int = 0) -> tuple[Callable[[], Any], bool]:
    """``(timed call, whether its result is tensors to touch)`` for one operation; builds inputs now."""
    if side == "machine":
        return _limit(action, path, nbytes)
    from benchmarks import diagnostics

    if action in diagnostics.ACTIONS:
        return diagnostics.prepare(side, action, path)
    if action in ("save", "save_nofsync"):
        # Every save writes a new file: replacing the previous run's file would add the file system's cost
        # of freeing it (here, ~0.45 s for 498 MB: ext4 mounted with `discard`), which is no tool's own.
        remove_outputs(path)
    if side == "stock":
        if action == "save":
            return _STOCK_SAVE[fmt](make_dict(), path), False
        if action == "load":
            return _STOCK_LOAD[fmt](path), True
        if action == "load_mmap" and fmt == "torch":
            return _stock_torch_load(path, mmap=True), True
    elif side in ("paramio", "paramio-ext"):
        # Import the format's module now, so that its import is not timed (stock tools are imported too).
        from paramio.formats.registry import by_name

        by_name(fmt)
        options = {"external_data": True} if side == "paramio-ext" else {}
        if action in ("save", "save_nofsync"):
            return _paramio_save(make_dict(), path, durable=action == "save", **options), False
        if action in ("load", "load_noverify"):
            return _paramio_load(path, verify=action == "load"), True
        if action == "read_manifest":
            return _paramio_read_manifest(path), False
        if action == "inspect":
            return _paramio_inspect(path), False
        if action == "convert" and dst is not None:
            by_name("hdf5" if dst.suffix in (".h5", ".hdf5") else dst.suffix.lstrip("."))
            return _paramio_convert(path, dst), False
    raise ValueError(f"no operation {side}/{action} for {fmt}")


def remove_outputs(path: Path) -> None:
    """A checkpoint and any side files (ONNX external data) next to it."""
    for p in Path(path).parent.glob(Path(path).name + "*"):
        os.unlink(p)
