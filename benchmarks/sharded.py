"""The sharded-folder phase: the ``big`` case (and the opt-in ``xl``, 4x big) as a Hugging Face folder of
~500 MB shards, paramio against huggingface_hub / transformers-style loading in the same run.

Operations (format ``sharded``; each in its own worker process like every other job):

- ``shard_save``: paramio ``save(sd, "folder/", max_shard_size)`` vs ``huggingface_hub.save_torch_state_dict``
  (which is not atomic: it deletes the previous shards first, then writes the new ones in place).
- ``load_into``: into a model built on the meta device, from the paramio folder: paramio ``load_into`` vs
  the transformers-style path (``safetensors.torch.load_file`` per shard + ``load_state_dict(assign=True)``,
  which holds a whole shard at a time).
- ``from_shards`` / ``to_shards`` / ``single``: ``convert`` folder -> one file, one file -> folder, and one
  file -> one file (the baseline the sharded converts are compared with).
- ``read_manifest`` / ``inspect`` of the folder (the index and the shard headers only).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import cases

__all__ = ["LIMIT", "limit_for", "ACTIONS", "folder_for", "single_for", "prepare", "meta_model", "stock_load_into", "warm"]

#: The shard size of the phase at full scale: 5 shards for big, ~18 for xl.
LIMIT = "500MB"


def limit_for(scale: str) -> int:
    """The shard size at ``scale``: as many shards as at full scale (500 MB of 2.15 GB for big)."""
    return 500_000_000 * cases.spec("big", scale).nbytes // cases.spec("big", "full").nbytes
ACTIONS = ("shard_save", "load_into", "from_shards", "to_shards", "single", "read_manifest", "inspect")


def folder_for(work: Path, case: str, side: str) -> Path:
    return Path(work) / f"{case}.{side}.shards"


def single_for(work: Path, case: str) -> Path:
    """The single file the converts start from (the ``big`` phase's own paramio file for ``big``)."""
    return Path(work) / f"{case}.paramio.safetensors"


def meta_model(spec: cases.Spec) -> nn.Module:
    """A module with the case's parameter names and shapes on the meta device, the alias tied (as
    ``init_empty_weights`` or ``with torch.device("meta")`` gives a transformers model)."""
    with torch.device("meta"):
        root = nn.Module()
        for name, shape in spec.shapes:
            _place(root, name, nn.Parameter(torch.empty(shape)))
    for alias, canonical in spec.aliases:
        _place(root, alias, root.get_parameter(canonical))
    return root


def _place(root: nn.Module, name: str, parameter: nn.Parameter) -> None:
    """Register ``parameter`` under the dotted ``name``, making the submodules on the way."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    module.register_parameter(leaf, parameter)


def stock_load_into(model: nn.Module, folder: Path) -> nn.Module:
    """transformers-style loading: every shard with ``load_file``, assigned into the meta model, then the tie
    restored by the model (``tie_weights``)."""
    import json

    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        model.load_state_dict(load_file(folder / shard), strict=False, assign=True)
    model.get_submodule(cases.ALIAS.rpartition(".")[0]).register_parameter(
        cases.ALIAS.rpartition(".")[2], model.get_parameter(cases.CANONICAL))
    return model


def warm(work: Path, case: str, action: str) -> None:
    """Read the input once, untimed (as the other phases do): the folder, or the single file."""
    from benchmarks.worker import warm as warm_file

    if action in ("load_into", "from_shards"):
        for path in sorted(folder_for(work, case, "paramio").iterdir()):
            warm_file(path)
    elif action in ("to_shards", "single"):
        warm_file(single_for(work, case))


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def prepare(side: str, action: str, work: Path, spec: cases.Spec, dst: Path | None = None
            ) -> tuple[Callable[[], Any], bool]:
    """``(timed call, whether its result is tensors to touch)`` for one sharded operation."""
    import paramio

    by_paramio = folder_for(work, spec.case, "paramio")
    limit = limit_for(spec.scale)
    if action == "shard_save":
        target = folder_for(work, spec.case, side)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        sd = cases.state_dict(spec)
        if side == "stock":
            from huggingface_hub import save_torch_state_dict

            return (lambda: save_torch_state_dict(dict(sd), target, max_shard_size=limit)), False
        return (lambda: paramio.save(sd, f"{target}/", max_shard_size=limit)), False
    if action == "load_into":
        model = meta_model(spec)
        if side == "stock":
            return (lambda: _params(stock_load_into(model, by_paramio))), True
        return (lambda: (paramio.load_into(model, by_paramio), _params(model))[1]), True
    if action in ("from_shards", "to_shards", "single") and dst is not None:
        source = by_paramio if action == "from_shards" else single_for(work, spec.case)
        out = f"{dst}/" if action == "to_shards" else dst
        shutil.rmtree(dst, ignore_errors=True) if dst.is_dir() else dst.unlink(missing_ok=True)  # untimed

        def run() -> None:
            paramio.convert(source, out, max_shard_size=limit if action == "to_shards" else None)

        return run, False
    if action == "read_manifest":
        return (lambda: paramio.read_manifest(by_paramio)), False
    if action == "inspect":
        from benchmarks.tools import _paramio_inspect

        return _paramio_inspect(by_paramio), False
    raise ValueError(f"no sharded operation {side}/{action}")


# -- the phase's report ----------------------------------------------------------------------------------------


def jobs(case: str, job: Callable[..., Any]) -> list[Any]:
    """The phase's jobs for one case, stock and paramio side by side (``job``: ``run.Job``)."""
    return [job(case, "sharded", "paramio", "shard_save"), job(case, "sharded", "stock", "shard_save"),
            job(case, "sharded", "stock", "load_into"), job(case, "sharded", "paramio", "load_into"),
            job(case, "sharded", "paramio", "single"), job(case, "sharded", "paramio", "from_shards"),
            job(case, "sharded", "paramio", "to_shards"), job(case, "sharded", "paramio", "read_manifest"),
            job(case, "sharded", "paramio", "inspect")]


def outputs(work: Path, case: str) -> dict[str, Path]:
    """Where each convert writes (one file or folder, replaced by the next convert)."""
    return {"single": Path(work) / f"{case}.convert.safetensors", "from_shards": Path(work) / f"{case}.convert.safetensors",
            "to_shards": Path(work) / f"{case}.convert.shards"}


def report(specs: dict[str, cases.Spec], results: dict) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """The phase's table, and its targets as (title, measured, limit, met)."""
    from benchmarks.run import MiB, Job, _mem_cell, _median, _min, _ratio, _time_cell

    measured = [c for c in ("big", "xl") if any(j.case == c and j.fmt == "sharded" for j in results)]
    out = ""
    targets: list[tuple[str, str, str, bool]] = []
    for case in measured:
        spec = specs[case]
        shards = -(-spec.nbytes // limit_for(spec.scale))

        def rs(side: str, action: str, case: str = case) -> list[dict] | None:
            return results.get(Job(case, "sharded", side, action))

        out += (f"### sharded folder: {case}, {spec.nbytes / 1e9:.2f} GB in ~{shards} shards of {limit_for(spec.scale) / 1e6:g} MB "
                f"(largest tensor {spec.largest / MiB:.0f} MiB)\n\n"
                "| operation | stock | paramio | time ratio | stock extra peak | paramio extra peak |\n"
                "|---|---|---|---|---|---|\n")
        rows = [("save (stock: huggingface_hub.save_torch_state_dict, **not atomic**: removes the old shards "
                 "first; paramio: atomic, fsynced, checksummed)", "shard_save", "shard_save"),
                ("load_into a meta-device model (stock: load_file per shard + load_state_dict(assign=True))",
                 "load_into", "load_into"),
                ("convert one file -> one file (the baseline)", None, "single"),
                ("convert folder -> one file", None, "from_shards"),
                ("convert one file -> folder", None, "to_shards"),
                ("read_manifest of the folder", None, "read_manifest"),
                ("paramio inspect of the folder", None, "inspect")]
        for label, stock, action in rows:
            s, p = (rs("stock", stock) if stock else None), rs("paramio", action)
            ratio = _ratio(_median(p), _median(s))
            out += (f"| {label} | {_time_cell(s, spec.nbytes, 1) if s else '-'} | {_time_cell(p, spec.nbytes, 1)} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}×'} | {_mem_cell(s, spec.nbytes) if s else '-'} | "
                    f"{_mem_cell(p, spec.nbytes)} |\n")
        out += "\n"
        bound = spec.largest + 300 * MiB
        for action, what in (("from_shards", "folder -> one file"), ("to_shards", "one file -> folder")):
            extra = _median(rs("paramio", action), "extra")
            if extra is not None:
                targets.append((f"{case}: convert {what}: extra peak ≤ largest tensor + 300 MiB",
                                f"{extra / MiB:.0f} MiB", f"{bound / MiB:.0f} MiB", extra <= bound))
            ratio = _ratio(_median(rs("paramio", action)), _median(rs("paramio", "single")))
            if ratio is not None:
                best = _ratio(_min(rs("paramio", action)), _min(rs("paramio", "single")))
                targets.append((f"{case}: convert {what} vs one file -> one file (time)",
                                f"{ratio:.2f}× (fastest runs {best:.2f}×)", "≤ 1.1×", ratio <= 1.1))
        ratio = _ratio(_median(rs("paramio", "load_into")), _median(rs("stock", "load_into")))
        if ratio is not None:
            best = _ratio(_min(rs("paramio", "load_into")), _min(rs("stock", "load_into")))
            targets.append((f"{case}: load_into meta model from the folder vs load_file per shard + assign (time)",
                            f"{ratio:.2f}× (fastest runs {best:.2f}×)", "≤ 1.0×", ratio <= 1.0))
        extra = _median(rs("paramio", "load_into"), "extra")
        if extra is not None:
            model_bound = spec.nbytes + bound
            targets.append((f"{case}: load_into extra peak ≤ the model + largest tensor + 300 MiB",
                            f"{extra / MiB:.0f} MiB", f"{model_bound / MiB:.0f} MiB", extra <= model_bound))
    if "big" in measured and "xl" in measured:
        for action in ("read_manifest", "inspect"):
            ratio = _ratio(_median(results.get(Job("xl", "sharded", "paramio", action))),
                           _median(results.get(Job("big", "sharded", "paramio", action))))
            if ratio is not None:
                targets.append((f"{action} of the folder: xl / big time (constant in size)", f"{ratio:.2f}×",
                                "≤ 1.5×", ratio <= 1.5))
    return out, targets
