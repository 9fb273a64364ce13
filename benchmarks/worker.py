"""One operation in this process: prepare it, then time it and measure its peak memory; print JSON.

    python -m benchmarks.worker --case gpt2 --format safetensors --side paramio --action load --dir /tmp/x

Memory: the resident set right before the operation is the baseline (for a save it holds the state dict,
which is the user's own); the kernel's high-water mark is reset (``/proc/self/clear_refs``) just before the
timed call and read after it, so ``extra`` is the operation's own peak, exact, not sampled. Mapped file
pages count as resident once touched, as in ``ps``. ``--profile`` runs the operation under pyinstrument
instead and prints where its time goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "measure", "run_job", "warm"]


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _rchar() -> int:
    """Bytes this process has read through read()/pread() so far (mapped reads are not counted)."""
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def warm(path: Path) -> None:
    """Read a checkpoint and its side files once, untimed, so that a load starts from a warm page cache
    (on this VM, file pages nobody touched for a while cost ~10x more to map; see the README)."""
    buf = bytearray(16 << 20)
    for p in sorted(Path(path).parent.glob(Path(path).name + "*")):
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _import_paramio() -> None:
    """Import the modules behind paramio's verbs, untimed: ``import paramio`` loads them on first use (so
    that ``paramio --help`` needs no torch), and a benchmark times the operation, not a one-time import,
    as it does for the stock tools, whose modules the preparation has imported already."""
    import paramio

    for name in ("save", "load", "load_into", "read_manifest", "convert", "diff", "stats", "validate"):
        getattr(paramio, name)


def measure(call, touches: bool) -> dict[str, float | int]:
    """Time ``call`` (and touching its result), with the resident-set baseline and peak around it."""
    from benchmarks.tools import touch

    gc.collect()  # the collector stays on during the operation, as in the user's process
    before = _status()
    exact = _reset_peak()
    rchar = _rchar()
    cpu = time.process_time()
    start = time.perf_counter()
    result = call()
    if touches:
        touch(result)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rchar = _rchar() - rchar
    after = _status()
    peak = after["VmHWM"] if exact else max(after["VmHWM"], after["VmRSS"])
    del result
    return {"time": elapsed, "cpu": cpu, "baseline": before["VmRSS"], "peak": peak, "extra": peak - before["VmRSS"],
            "rchar": rchar, "exact_peak": exact}


def run_job(case: str, scale: str, fmt: str, side: str, action: str, folder: Path,
            dst: Path | None = None) -> dict:
    """Prepare and measure one operation in this process; errors become ``{"error": ...}``."""
    from benchmarks import cases
    from benchmarks.tools import path_for, prepare

    if fmt == "dcp":
        from benchmarks import dcp

        return dcp.run_job(case, scale, side, action, folder)
    spec = cases.spec(case, scale)
    try:
        if fmt == "sharded":
            from benchmarks import sharded

            call, touches = sharded.prepare(side, action, folder, spec, dst)
            sharded.warm(folder, spec.case, action)
        else:
            path = path_for(folder, case, fmt, side)
            call, touches = prepare(side, action, fmt, path, lambda: cases.state_dict(spec), dst, spec.nbytes)
            if touches or action == "convert":
                warm(path)
        if action.startswith(("save", "write", "shard_save")) or action in ("convert", "from_shards", "to_shards",
                                                                             "single"):
            # Start from a clean page cache: the previous job's unsynced writes (stock tools and
            # durable=False) would otherwise be written back during this one, whichever tool (or machine
            # limit) it times.
            os.sync()
        if side.startswith("paramio"):
            _import_paramio()
        return measure(call, touches)
    except Exception as e:  # reported as a row, so that one broken format does not stop the run
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import cases
    from benchmarks.tools import path_for, prepare

    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=cases.CASES)
    ap.add_argument("--scale", default="full", choices=cases.SCALES)
    ap.add_argument("--format", required=True)
    ap.add_argument("--side", required=True, choices=("stock", "paramio", "paramio-ext", "machine"))
    ap.add_argument("--action", required=True)
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--dst", type=Path, help="output of --action convert")
    ap.add_argument("--profile", action="store_true", help="print a pyinstrument profile instead of JSON")
    args = ap.parse_args(argv)

    if args.profile:
        from pyinstrument import Profiler

        from benchmarks.tools import touch

        spec = cases.spec(args.case, args.scale)
        path = path_for(args.dir, args.case, args.format, args.side)
        call, touches = prepare(args.side, args.action, args.format, path, lambda: cases.state_dict(spec), args.dst,
                                spec.nbytes)
        if touches or args.action == "convert":
            warm(path)
        with Profiler(interval=0.0005) as prof:
            result = call()
            if touches:
                touch(result)
        del result
        prof.print(file=sys.stdout, show_all=False, short_mode=False)
        return 0
    out = run_job(args.case, args.scale, args.format, args.side, args.action, args.dir, args.dst)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
