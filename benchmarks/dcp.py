"""The torch.distributed.checkpoint phase of ``make bench`` (one process, the gpt2 case, its tie included):

- save: stock ``dcp.save`` with DCP's ``FileSystemWriter`` vs the same call with ``paramio.dcp.StorageWriter``
  (both fsync their files, as DCP does by default); also the bytes each leaves on disk (paramio stores the
  tied embedding once, stock DCP twice).
- convert: the stock DCP folder to one safetensors file, by paramio ``convert`` vs the stock path
  (``format_utils.dcp_to_torch_save``, then ``torch.load`` and ``safetensors.torch.save_file``), with the
  extra peak memory of each (paramio holds one tensor; the stock path the whole model, twice for the tie).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["JOBS", "dcp_table", "dcp_targets", "disk_bytes", "prepare"]

MiB = 1 << 20
#: (side, action) of the phase, stock and paramio side by side.
JOBS = (("stock", "save"), ("paramio", "save"), ("stock", "convert"), ("paramio", "convert"))


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()) if Path(folder).is_dir() else 0


def _save(sd: Mapping[str, torch.Tensor], path: Path, paramio_writer: bool) -> Callable[[], Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    import paramio.dcp

    writer = paramio.dcp.StorageWriter(path) if paramio_writer else FileSystemWriter(path)

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp.save(dict(sd), storage_writer=writer, no_dist=True)

    return run


def _stock_convert(src: Path, dst: Path) -> Callable[[], Any]:
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    staged = dst.with_suffix(".pt")

    def run() -> None:
        dcp_to_torch_save(src, staged)
        save_file(torch.load(staged, weights_only=True), str(dst))
        staged.unlink()

    return run


def _paramio_convert(src: Path, dst: Path) -> Callable[[], Any]:
    import paramio

    return lambda: paramio.convert(src, dst)


def prepare(side: str, action: str, path: Path, make_dict: Callable[[], dict[str, torch.Tensor]],
            source: Path) -> Callable[[], Any]:
    """The timed call for one job; ``path`` is its output, ``source`` the stock DCP folder converts read."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    for p in Path(path).parent.glob(Path(path).name + "*"):
        os.unlink(p)
    if action == "save":
        return _save(make_dict(), path, side == "paramio")
    if action == "convert":
        return (_paramio_convert if side == "paramio" else _stock_convert)(source, path)
    raise ValueError(f"no DCP operation {side}/{action}")


def dcp_table(spec: Any, results: dict, job: Callable[[str, str], Any], cell: Callable[..., str],
              mem: Callable[..., str]) -> str:
    out = (f"### torch.distributed.checkpoint: gpt2, {spec.nbytes / 1e6:.0f} MB + 1 tied alias, one process\n\n"
           "| operation | stock | paramio | paramio / stock | stock extra peak | paramio extra peak | "
           "stock on disk | paramio on disk |\n|---|---|---|---|---|---|---|---|\n")
    labels = {"save": "dcp.save: FileSystemWriter vs paramio.dcp.StorageWriter",
              "convert": "stock DCP -> safetensors: dcp_to_torch_save + save_file vs paramio.convert"}
    for action, label in labels.items():
        s, p = results.get(job("stock", action)), results.get(job("paramio", action))
        if s is None and p is None:
            continue
        ms, mp = _median(s), _median(p)
        ratio = f"{mp / ms:.2f}×" if ms and mp else "-"
        disk = [f"{d / 1e6:.1f} MB" if (d := _median(rs, "disk")) else "-" for rs in (s, p)]
        out += (f"| {label} | {cell(s, spec.nbytes, 1)} | {cell(p, spec.nbytes, 1)} | {ratio} | "
                f"{mem(s, spec.nbytes)} | {mem(p, spec.nbytes)} | {disk[0] if action == 'save' else '-'} | "
                f"{disk[1] if action == 'save' else '-'} |\n")
    return out


def _median(rs: list[dict] | None, key: str = "time") -> float | None:
    import statistics

    good = [r[key] for r in rs or [] if "error" not in r and key in r]
    return statistics.median(good) if good else None


def _fastest(results: dict, job: Callable[[str, str], Any], action: str) -> str:
    """The ratio of the fastest runs and of CPU time: this VM's noise (fsync stalls) only ever adds time."""
    def low(side: str, key: str) -> float | None:
        good = [r[key] for r in results.get(job(side, action)) or [] if "error" not in r and key in r]
        return min(good) if good else None

    fast = [low(side, "time") for side in ("paramio", "stock")]
    cpu = [_median(results.get(job(side, action)), "cpu") for side in ("paramio", "stock")]
    parts = []
    if all(fast):
        parts.append(f"fastest runs {fast[0] / fast[1]:.2f}×")
    if all(cpu):
        parts.append(f"CPU time {cpu[0] / cpu[1]:.2f}×")
    return f" ({', '.join(parts)})" if parts else ""


def dcp_targets(spec: Any, results: dict, job: Callable[[str, str], Any]) -> list[tuple[str, str, str, bool]]:
    """(title, measured, limit, met) for the issue's DCP targets."""
    rows = []
    ps, ss = _median(results.get(job("paramio", "save"))), _median(results.get(job("stock", "save")))
    if ps and ss:
        rows.append(("DCP save: paramio StorageWriter vs FileSystemWriter inside dcp.save",
                     f"{ps / ss:.2f}×{_fastest(results, job, 'save')}", "≤ 1.1×", ps / ss <= 1.1))
    disk = _median(results.get(job("paramio", "save")), "disk")
    if disk:
        # DCP's own framing (a torch.save record per tensor, the pickled metadata) is allowed: 1% here.
        rows.append(("DCP save: bytes on disk vs the canonical bytes (the tie stored once)",
                     f"{disk / spec.nbytes:.3f}×", "≤ 1.01×", disk <= 1.01 * spec.nbytes))
    pc, sc = _median(results.get(job("paramio", "convert"))), _median(results.get(job("stock", "convert")))
    if pc and sc:
        rows.append(("stock DCP -> safetensors: paramio convert vs dcp_to_torch_save + save_file",
                     f"{pc / sc:.2f}×{_fastest(results, job, 'convert')}", "≤ 0.5×", pc / sc <= 0.5))
    extra = _median(results.get(job("paramio", "convert")), "extra")
    if extra is not None:
        limit = spec.largest + 300 * MiB
        rows.append(("stock DCP -> safetensors: paramio extra peak ≤ largest tensor + 300 MiB",
                     f"{extra / MiB:.0f} MiB", f"{limit / MiB:.0f} MiB", extra <= limit))
    return rows


def paths(folder: Path, case: str, side: str, action: str) -> tuple[Path, Path]:
    """(this job's output, the stock DCP folder that converts read)."""
    source = Path(folder) / f"{case}.stock.dcp"
    out = Path(folder) / (f"{case}.{side}.dcp" if action == "save" else f"{case}.{side}.convert.safetensors")
    return out, source


def run_job(case: str, scale: str, side: str, action: str, folder: Path) -> dict:
    """Prepare and measure one DCP job in this process (as ``benchmarks.worker.run_job`` does)."""
    from benchmarks import cases
    from benchmarks.worker import measure

    spec = cases.spec(case, scale)
    out, source = paths(folder, case, side, action)
    try:
        call = prepare(side, action, out, lambda: cases.state_dict(spec), source)
        if action == "convert":
            _warm(source)
        os.sync()  # as the other jobs: no earlier job's write-back during this one
        result = measure(call, False)
        if action == "save":
            result["disk"] = disk_bytes(out)
        return result
    except Exception as e:  # noqa: BLE001 - reported as a row
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def _warm(folder: Path) -> None:
    buf = bytearray(16 << 20)
    for p in sorted(Path(folder).iterdir()):
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
