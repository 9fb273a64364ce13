"""The diagnostics' operations: ``paramio.stats``, ``paramio.diff`` and ``paramio.report`` against a plain
single pass in torch over ``safetensors.torch.load_file`` (per tensor in float64: sum, sum of squares, min,
max, isfinite, histc), the reference the issue states.

Actions (format safetensors):

- ``stats`` — stock: the plain loop over one file; paramio: ``paramio.stats(path)`` (checksums verified,
  finite-only figures, histograms).
- ``stats2`` — stock: the plain loop over the file and its perturbed copy (what ``diff`` is held to).
- ``diff`` — paramio: ``paramio.diff(path, perturbed)`` (every tensor: max_abs, relative change, cosine).
- ``report`` — paramio: ``paramio.report(path, path=….png)`` (the statistics and the figure).

The perturbed copy (every 7th tensor plus seeded noise of std 1e-3) is written once, untimed, by
``prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["ACTIONS", "prepare", "plain_stats", "perturbed_of"]

ACTIONS = ("stats", "stats2", "diff", "report")


def plain_stats(path: Path, bins: int = 64) -> dict[str, tuple[float, ...]]:
    """The reference: load_file, then per tensor in float64 sum, sum of squares, min, max, isfinite and
    histc, the way a user would write it."""
    from safetensors.torch import load_file

    out = {}
    for name, t in load_file(str(path)).items():
        x = t.double()
        lo, hi = float(x.min()), float(x.max())
        hist = torch.histc(x, bins, lo, hi)
        out[name] = (float(x.sum()), float((x * x).sum()), lo, hi, bool(torch.isfinite(x).all()), float(hist[0]))
    return out


def perturbed_of(path: Path) -> Path:
    """``path``'s perturbed copy (written once, seeded): what ``diff`` compares against."""
    import paramio

    copy = path.with_name(path.name + ".perturbed.safetensors")  # removed with ``path``'s side files
    if copy.exists():
        return copy
    ck = paramio.load(path, verify=False)
    gen = torch.Generator().manual_seed(7)
    changed = {}
    for i, entry in enumerate(ck.manifest.tensors):
        t = ck[entry.name]
        changed[entry.name] = t + torch.randn(t.shape, generator=gen) * 1e-3 if i % 7 == 0 else t
    for group in ck.ties:
        for alias in group.aliases:
            changed[alias] = changed[group.canonical]
    paramio.save(changed, copy, durable=False)
    return copy


def prepare(side: str, action: str, path: Path) -> tuple[Callable[[], Any], bool]:
    """``(timed call, False)``: nothing to touch afterwards, the operations read every byte themselves."""
    import paramio

    if side == "stock" and action == "stats":
        return (lambda: plain_stats(path)), False
    if side == "stock" and action == "stats2":
        other = perturbed_of(path)
        return (lambda: (plain_stats(path), plain_stats(other))), False
    if side == "paramio" and action == "stats":
        return (lambda: paramio.stats(path)), False
    if side == "paramio" and action == "diff":
        other = perturbed_of(path)
        return (lambda: paramio.diff(path, other)), False
    if side == "paramio" and action == "report":
        import matplotlib  # noqa: F401 - imported untimed, as the stock tools are

        out = path.with_name(path.name + ".report.png")
        return (lambda: paramio.report(path, path=out)), False
    raise ValueError(f"no diagnostics operation {side}/{action}")


def main(argv: list[str] | None = None) -> int:
    """The diagnostics phase alone, with the harness of ``make bench`` (same jobs, processes, tables)."""
    import argparse
    import shutil
    import tempfile

    from benchmarks import cases, run
    from benchmarks.run import Job

    ap = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics", description=main.__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", default="full", choices=cases.SCALES)
    ap.add_argument("--big", action="store_true", help="also diff the big case once (its peak memory)")
    ap.add_argument("--tmp", type=Path, help="parent folder for the temporary checkpoints")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="paramio-bench-diag-", dir=args.tmp))
    specs = {"gpt2": cases.spec("gpt2", args.scale)}
    results: dict = {}
    try:
        prepare_jobs = [Job("gpt2", "safetensors", "stock", "save"), Job("gpt2", "safetensors", "paramio", "save")]
        run._interleave(prepare_jobs, 1, folder, args.scale, {}, "prepare")
        run._interleave(run.DIAGNOSTICS, args.runs, folder, args.scale, results, "diagnostics")
        if args.big:
            for p in folder.glob("gpt2.*"):
                p.unlink()
            specs["big"] = cases.spec("big", args.scale)
            run._interleave([Job("big", "safetensors", "paramio", "save")], 1, folder, args.scale, {}, "prepare")
            run._interleave([Job("big", "safetensors", "paramio", "diff")], 1, folder, args.scale, results, "big")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(run.case_table("gpt2", specs["gpt2"], ["safetensors"], results))
    rows = run.target_rows(results, specs)[0].splitlines()
    print("\n".join(r for r in rows if "not measured" not in r))  # only this phase's targets
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
