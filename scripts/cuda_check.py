"""A short CUDA check, run by hand on a machine with a GPU (never part of the test suite):

    PYTHONPATH=. python scripts/cuda_check.py          (or --device cpu for a dry run here)

Saves models that live on the GPU in every format, loads with ``device="cuda"``, and rebuilds ties in a
GPU model with ``load_into``: identity, device, values and summed gradients.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import torch
from torch import nn

import paramio
from paramio.examples import TinyLM, tied_mlp, tiny_lm

SUFFIXES = (".safetensors", ".h5", ".pt", ".onnx")


def untied_lm() -> TinyLM:
    model = TinyLM()
    model.head.weight = nn.Parameter(torch.zeros_like(model.embed.weight))
    return model


def check(suffix: str, folder: Path, device: str) -> list[str]:
    failures = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            failures.append(f"{suffix}: {what}")

    dev = torch.device(device)
    model = tiny_lm().to(dev)
    path = folder / f"lm{suffix}"
    paramio.save(model, path)
    ck = paramio.load(path, device=device)
    expect(ck["head.weight"] is ck["embed.weight"], "load: alias is not the canonical object")
    expect(all(t.device.type == dev.type for t in ck.values()), "load: a tensor is not on cuda")
    expect(torch.equal(ck["embed.weight"], model.embed.weight.detach()), "load: values differ")

    fresh = untied_lm().to(dev)
    paramio.load_into(fresh, path)
    expect(fresh.head.weight is fresh.embed.weight, "load_into: head not re-tied")
    expect(fresh.embed.weight.device.type == dev.type, "load_into: parameter left the GPU")
    tokens = torch.randint(0, 32, (3, 8), device=dev)
    expect(torch.equal(fresh(tokens), model(tokens)), "load_into: outputs differ")
    fresh(tokens).sum().backward()
    model(tokens).sum().backward()
    expect(torch.allclose(fresh.embed.weight.grad, model.embed.weight.grad), "grads differ")

    lazy = tied_mlp(initialized=False).to(dev)
    mlp_path = folder / f"mlp{suffix}"
    paramio.save(tied_mlp().to(dev), mlp_path, dtype=torch.bfloat16)
    paramio.load_into(lazy, mlp_path, strict=False)
    expect(lazy[2] is lazy[4] and lazy[0].weight.device.type == dev.type, "lazy: not materialized on cuda")

    base = torch.arange(12.0, device=dev).reshape(3, 4)
    views_path = folder / f"views{suffix}"
    paramio.save({"base": base, "row": base[1], "t": base.t()}, views_path)
    v = paramio.load(views_path, device=device)
    v["base"][1, 0] = 100.0
    expect(v["row"][0].item() == 100.0 and v["t"][0, 1].item() == 100.0, "views do not share GPU memory")
    return failures


def main() -> int:
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, device: {device}")
    if device == "cuda":
        if not torch.cuda.is_available():
            return 2
        print(torch.cuda.get_device_name())
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in SUFFIXES:
            try:
                found = check(suffix, Path(tmp), device)
            except Exception:  # report and go on to the next format
                found = [f"{suffix}: crashed\n{traceback.format_exc()}"]
            failures += found
            print(f"{suffix:13} {'ok' if not found else 'FAILED'}")
    for f in failures:
        print(f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
