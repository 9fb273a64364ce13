"""load_into: put a checkpoint's values into a model and make its shared parameters shared again.

Identity is restored at the Parameter level (the alias slot holds the canonical Parameter object), since
shared storage alone gives separate Parameters whose gradients do not add up. Every check runs before the
model is touched, so a refused load leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .checkpoint import Checkpoint
from .dtypes import dtype_name
from .errors import ValidationError
from .reading import load
from .ties import identity_groups, named_tensors

__all__ = ["LoadReport", "load_into"]


@dataclass(frozen=True)
class LoadReport:
    """What ``load_into`` did: names loaded, alias slots re-tied, aliases filled from their canonical,
    lazy parameters materialized, gradients restored, and the problems it tolerated (``strict=False``)."""

    loaded: tuple[str, ...] = ()
    retied: tuple[tuple[str, str], ...] = ()
    filled: tuple[str, ...] = ()
    materialized: tuple[str, ...] = ()
    grads: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str, bool]:
    """(owning module, attribute, is_parameter) for a state_dict name."""
    prefix, _, attr = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    return module, attr, attr in module._parameters


def _describe(t: torch.Tensor) -> str:
    if _is_lazy(t):
        return f"uninitialized {dtype_name(t.dtype)}"
    return f"{dtype_name(t.dtype)}{list(t.shape)}"


def _set_slot(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, attr, is_param = _slot(model, name)
    if is_param:
        module._parameters[attr] = value
    else:
        module._buffers[attr] = value


def _finish_lazy_modules(model: nn.Module) -> None:
    """Do for materialized lazy modules what their first forward pass would have done."""
    for module in model.modules():
        if not isinstance(module, LazyModuleMixin) or module.has_uninitialized_params():
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
            if isinstance(module, nn.Linear):
                module.in_features = weight.shape[1]
            elif isinstance(module, nn.modules.conv._ConvNd):
                module.in_channels = weight.shape[0] if module.transposed else weight.shape[1] * module.groups
        if isinstance(module, nn.modules.batchnorm._NormBase):
            ref = weight if isinstance(weight, torch.Tensor) else getattr(module, "running_mean", None)
            if isinstance(ref, torch.Tensor):
                module.num_features = ref.shape[0]
        if hasattr(module, "_initialize_hook"):
            module._initialize_hook.remove()
            module._load_hook.remove()
            delattr(module, "_initialize_hook")
            delattr(module, "_load_hook")
        if module.cls_to_become is not None:
            module.__class__ = module.cls_to_become


def load_into(model: nn.Module, source: str | Path | Checkpoint, *, strict: bool = True,
              retie: bool = True) -> LoadReport:
    """Copy a checkpoint into ``model``, re-tie shared parameters, materialize lazy ones.

    ``strict``: any mismatch of names, shapes, dtypes or ties raises :class:`ValidationError` listing
    every problem, before the model is changed. ``retie``: apply the checkpoint's tie groups to the model
    and fill model aliases that the file does not store from their canonical.
    """
    ck = source if isinstance(source, Checkpoint) else load(source)
    named = named_tensors(model)
    params = dict(named)
    groups = identity_groups(named)  # the model's own tie groups, canonical first
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    ck_alias = ck.manifest.alias_map()

    def ck_canon(name: str) -> str:
        return ck_alias.get(name, name)

    problems: list[str] = []
    missing: list[str] = []
    filled: list[str] = []
    sources: dict[int, str] = {}  # model group -> checkpoint name its value comes from
    for i, members in enumerate(groups):
        present = [n for n in members if n in ck]
        if not present:
            missing += members
            problems += [f"tensor `{n}`: missing from the checkpoint" for n in members]
            continue
        if len({ck_canon(n) for n in present}) > 1:
            problems.append(
                f"tie group {', '.join(f'`{n}`' for n in present)}: one tensor in the model, but the checkpoint "
                "stores them as different tensors"
            )
        absent = [n for n in members if n not in ck]
        if absent:
            if retie:
                filled += absent
            else:
                problems += [f"alias `{n}`: not in the checkpoint (retie=False does not fill it from "
                             f"`{present[0]}`)" for n in absent]
        sources[i] = present[0]
        target, value = params[members[0]], ck[present[0]]
        if _is_lazy(target):
            if target.dtype != value.dtype:
                problems.append(f"tensor `{members[0]}`: dtype {dtype_name(value.dtype)} in the checkpoint, "
                                f"{dtype_name(target.dtype)} in the model")
        elif (target.dtype, tuple(target.shape)) != (value.dtype, tuple(value.shape)):
            problems.append(f"tensor `{members[0]}`: {_describe(value)} in the checkpoint, {_describe(target)} "
                            "in the model")

    # Checkpoint ties that the model lacks: merge the model groups they span.
    merges: list[tuple[int, list[int], str]] = []
    for group in ck.ties:
        spanned = sorted({group_of[n] for n in group.names if n in group_of})
        if len(spanned) < 2:
            continue
        names = ", ".join(f"`{n}`" for n in group.names if n in group_of)
        if not retie:
            problems.append(f"tie group {names}: one tensor in the checkpoint, separate in the model (retie=False)")
            continue
        kinds = {_slot(model, groups[i][0])[2] for i in spanned}
        if len(kinds) > 1:
            problems.append(f"tie group {names}: ties a parameter to a buffer; cannot share them")
            continue
        target = group_of.get(group.canonical, spanned[0])
        merges.append((target, [i for i in spanned if i != target], group.canonical))

    model_names = set(params)
    unexpected = [n for n, t in ck.items() if n not in model_names and _kind(ck, n) != "constant"]
    problems += [f"tensor `{n}`: in the checkpoint but not in the model" for n in unexpected]

    if strict and problems:
        raise ValidationError(problems, subject=f"loading into {type(model).__name__}")

    loaded: list[str] = []
    retied: list[tuple[str, str]] = []
    materialized: list[str] = []
    restored_grads: list[str] = []
    with torch.no_grad():
        for target, others, _ in merges:
            keep = params[groups[target][0]]
            for i in others:
                for n in groups[i]:
                    _set_slot(model, n, keep)
                    params[n] = keep
                    retied.append((n, groups[target][0]))
        done: set[int] = set()
        for i, members in enumerate(groups):
            if i not in sources:
                continue
            param = params[members[0]]
            if id(param) in done:  # a group merged into one loaded earlier
                loaded += [n for n in members if n in ck]
                continue
            value = ck[sources[i]]
            if _is_lazy(param):
                param.materialize(value.shape)
                materialized.append(members[0])
            elif tuple(param.shape) != tuple(value.shape):
                continue  # tolerated mismatch (strict=False): leave this one as it is
            param.copy_(value)
            done.add(id(param))
            loaded += [n for n in members if n in ck]
            grad = next((ck.grads[n] for n in members if n in ck.grads), None)
            if grad is not None and isinstance(param, nn.Parameter) and tuple(grad.shape) == tuple(param.shape):
                param.grad = grad.detach().to(device=param.device, dtype=param.dtype).clone()
                restored_grads.append(members[0])
        if materialized:
            _finish_lazy_modules(model)
    return LoadReport(
        loaded=tuple(loaded), retied=tuple(retied), filled=tuple(filled), materialized=tuple(materialized),
        grads=tuple(restored_grads), missing=tuple(missing), unexpected=tuple(unexpected),
        problems=tuple(problems),
    )


def _kind(ck: Checkpoint, name: str) -> str:
    canonical = ck.manifest.alias_map().get(name, name)
    for t in ck.manifest.tensors:
        if t.name == canonical:
            return t.kind
    return "parameter"
