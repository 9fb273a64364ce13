"""load_into: put a checkpoint's values into a model and make its shared parameters shared again.

Identity is restored at the Parameter level (every name of a tie group holds the very same Parameter
object), since shared storage alone gives separate Parameters whose gradients do not add up.

It runs in two steps. :func:`plan_load` is pure: it compares the model with the checkpoint's manifest (and,
for model ties that the checkpoint stores as two tensors, their bytes) and says what would happen: the
problems, where each parameter's value comes from, which groups merge, which aliases are filled. Nothing is
changed until the plan has no problem (or ``strict=False``). :func:`apply_load` then first reads every value
it will need to keep (a parameter on the meta device or an uninitialized lazy one gets a fresh tensor, read
and verified) and verifies the others' checksums, and only then changes the model: a corrupt tensor found
while reading leaves the model as it was. From a path, tensors are read one at a time (a parameter on the
meta device costs one allocation, its own), so memory stays at the model plus one tensor.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .checkpoint import Checkpoint
from .checksum import algorithm_of
from .dtypes import dtype_name, torch_dtype
from .entries import split_entries
from .upgrades import upgrades, versions_in
from .errors import ValidationError
from .locations import Source, open_source
from .manifest import GRAD_PREFIX, Manifest
from .ties import identity_groups, named_tensors, view_of

__all__ = ["LoadReport", "LoadPlan", "load_into", "plan_load", "apply_load"]


@dataclass(frozen=True)
class LoadReport:
    """What ``load_into`` did: names loaded, alias slots re-tied (``(alias, canonical)``: checkpoint ties the
    model lacked, and model ties the checkpoint stored as equal copies), aliases filled from their canonical,
    parameters materialized (lazy or on the meta device), gradients restored, the model's state-dict entries
    that are not tensors and were left as they are (``get_extra_state``: ``skipped``), and the problems it
    tolerated (``strict=False``)."""

    loaded: tuple[str, ...] = ()
    retied: tuple[tuple[str, str], ...] = ()
    filled: tuple[str, ...] = ()
    materialized: tuple[str, ...] = ()
    grads: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


# -- what the checkpoint holds -------------------------------------------------------------------------------
class _Values(abc.ABC):
    """The checkpoint side of a load: its manifest, and the tensor under any of its names."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._alias = manifest.alias_map()
        self._views = {v.name: v for v in manifest.views}
        self._entries = {t.name: t for t in manifest.tensors}
        self.names = set(manifest.names())
        self._upgraded: dict[str, torch.Tensor] = {}

    def add(self, upgraded: dict[str, torch.Tensor]) -> None:
        """Entries the model's version-aware modules add to this checkpoint (see :mod:`paramio.upgrades`)."""
        self._upgraded = upgraded
        self.names |= set(upgraded)

    def meta_of(self, name: str) -> torch.Tensor:
        """An empty meta tensor of the dtype and shape stored under ``name``."""
        dtype, shape = self.signature(name)
        return torch.empty(shape, dtype=torch_dtype(dtype), device="meta")

    def canonical(self, name: str) -> str:
        return self._alias.get(name, name)

    def kind(self, name: str) -> str:
        if name in self._upgraded:
            return "buffer"
        canonical = self.canonical(name)
        found = self._entries.get(canonical) or self._views.get(canonical)
        return found.kind if found is not None else "parameter"

    def signature(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(dtype, shape) under a name, from the manifest alone."""
        if name in self._upgraded:
            return dtype_name(self._upgraded[name].dtype), tuple(self._upgraded[name].shape)
        canonical = self.canonical(name)
        view = self._views.get(canonical)
        if view is not None:
            return self._entries[view.base].dtype, view.shape
        entry = self._entries[canonical]
        return entry.dtype, entry.shape

    def tensor(self, name: str, *, verify: bool = True) -> torch.Tensor:
        if name in self._upgraded:
            return self._upgraded[name]
        canonical = self.canonical(name)
        view = self._views.get(canonical)
        if view is not None:
            return view_of(self.stored(view.base, verify=verify), view)
        return self.stored(canonical, verify=verify)

    def grad(self, name: str, *, verify: bool = True) -> torch.Tensor | None:
        key = GRAD_PREFIX + self.canonical(name)
        return self.stored(key, verify=verify) if key in self._entries else None

    def same_bytes(self, a: str, b: str) -> bool:
        """Whether two names hold equal dtype, shape and bytes (checksums of one algorithm that differ settle
        it without reading)."""
        if self.signature(a) != self.signature(b):
            return False
        sums = [getattr(self._entries.get(self.canonical(n)), "checksum", None) for n in (a, b)]
        if all(sums) and len({algorithm_of(s) for s in sums}) == 1 and sums[0] != sums[1]:
            return False
        return torch.equal(_bytes(self.tensor(a)), _bytes(self.tensor(b)))

    def needs_verification(self) -> bool:
        return False

    @abc.abstractmethod
    def stored(self, name: str, *, verify: bool) -> torch.Tensor:
        """A stored tensor (or gradient) by its manifest name."""


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


class _CheckpointValues(_Values):
    def __init__(self, ck: Checkpoint) -> None:
        super().__init__(ck.manifest)
        self._ck = ck

    def stored(self, name: str, *, verify: bool) -> torch.Tensor:
        if name.startswith(GRAD_PREFIX):
            return self._ck.grads[name[len(GRAD_PREFIX):]]
        return self._ck[name]


class _SourceValues(_Values):
    """Reads each tensor when asked (nothing is kept), verifying its checksum unless told it was already."""

    def __init__(self, source: Source, verify: bool) -> None:
        super().__init__(source.manifest())
        self._source = source
        self._verify = verify

    def stored(self, name: str, *, verify: bool) -> torch.Tensor:
        return self._source.read_entry(self._entries[name], verify=verify and self._verify)

    def needs_verification(self) -> bool:
        return self._verify


# -- the plan -----------------------------------------------------------------------------------------------
@dataclass
class _Unit:
    """One Parameter (or buffer) object after the load: every model name that will hold it, canonical first,
    and the checkpoint name its value comes from."""

    names: list[str]
    source: str


@dataclass
class LoadPlan:
    """What :func:`apply_load` will do; ``problems`` empty means the load is exact."""

    units: list[_Unit] = field(default_factory=list)
    retied: list[tuple[str, str]] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def _is_empty_slot(t: torch.Tensor) -> bool:
    """A parameter that holds no values yet: lazy (no shape) or on the meta device (no memory)."""
    return _is_lazy(t) or t.is_meta


def _describe(t: torch.Tensor) -> str:
    if _is_lazy(t):
        return f"uninitialized {dtype_name(t.dtype)}"
    return f"{dtype_name(t.dtype)}{list(t.shape)}"


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str, bool]:
    """(owning module, attribute, is_parameter) for a state_dict name."""
    prefix, _, attr = name.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    return module, attr, attr in module._parameters


def _group_source(members: list[str], target: torch.Tensor, values: _Values, retie: bool, plan: LoadPlan
                  ) -> str | None:
    """Where one model tie group's value comes from (None: nowhere), recording its problems in ``plan``."""
    present = [n for n in members if n in values.names]
    if not present:
        plan.missing += members
        plan.problems += [f"tensor `{n}`: missing from the checkpoint" for n in members]
        return None
    first = present[0]
    copies = [n for n in present[1:] if values.canonical(n) != values.canonical(first)]
    if copies:
        names = ", ".join(f"`{n}`" for n in present)
        if not retie:
            plan.problems.append(f"tie group {names}: one tensor in the model, but the checkpoint stores them as "
                                 "different tensors (retie=False)")
        elif all(values.same_bytes(first, n) for n in copies):
            plan.retied += [(n, first) for n in copies]  # equal copies (DCP and others store a tie twice)
        else:
            plan.problems.append(f"tie group {names}: one tensor in the model, but the checkpoint stores them as "
                                 "different tensors with different values (a tie broken since it was saved)")
    absent = [n for n in members if n not in values.names]
    if absent and retie:
        plan.filled += absent
    elif absent:
        plan.problems += [f"alias `{n}`: not in the checkpoint (retie=False does not fill it from `{first}`)"
                          for n in absent]
    dtype, shape = values.signature(first)
    if _is_lazy(target):
        if dtype_name(target.dtype) != dtype:
            plan.problems.append(f"tensor `{members[0]}`: dtype {dtype} in the checkpoint, "
                                 f"{dtype_name(target.dtype)} in the model")
    elif (dtype_name(target.dtype), tuple(target.shape)) != (dtype, shape):
        plan.problems.append(f"tensor `{members[0]}`: {dtype}{list(shape)} in the checkpoint, {_describe(target)} "
                             "in the model")
    return first


def _merges(model: nn.Module, groups: list[list[str]], values: _Values, retie: bool, plan: LoadPlan
            ) -> dict[int, int]:
    """Checkpoint ties that the model lacks: model group -> the group it merges into."""
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    into: dict[int, int] = {}
    for group in values.manifest.ties:
        spanned = sorted({group_of[n] for n in group.names if n in group_of})
        if len(spanned) < 2:
            continue
        names = ", ".join(f"`{n}`" for n in group.names if n in group_of)
        if not retie:
            plan.problems.append(f"tie group {names}: one tensor in the checkpoint, separate in the model (retie=False)")
            continue
        if len({_slot(model, groups[i][0])[2] for i in spanned}) > 1:
            plan.problems.append(f"tie group {names}: ties a parameter to a buffer; cannot share them")
            continue
        target = group_of.get(group.canonical, spanned[0])
        while target in into:
            target = into[target]
        for i in spanned:
            while i in into:
                i = into[i]
            if i != target:
                into[i] = target
    return into


def plan_load(model: nn.Module, values: _Values, *, retie: bool = True,
              named: list[tuple[str, torch.Tensor]] | None = None) -> LoadPlan:
    """What loading ``values`` into ``model`` would do; reads the checkpoint, changes nothing."""
    plan = LoadPlan()
    named = named_tensors(model) if named is None else named  # ``named``: the caller's, if it has it
    params = dict(named)
    groups = identity_groups(named)  # the model's own tie groups, canonical first
    sources = [_group_source(g, params[g[0]], values, retie, plan) for g in groups]
    into = _merges(model, groups, values, retie, plan)
    units: dict[int, _Unit] = {}
    for i, members in enumerate(groups):
        root = i
        while root in into:
            root = into[root]
        if root == i and sources[i] is not None:
            units[i] = _Unit(list(members), sources[i])
    for i, members in enumerate(groups):
        root = i
        while root in into:
            root = into[root]
        if root != i and root in units:
            units[root].names += members
            plan.retied += [(n, groups[root][0]) for n in members]
    plan.units = [units[i] for i in sorted(units)]
    plan.unexpected = [n for n in values.manifest.names() if n not in params and values.kind(n) != "constant"]
    plan.problems += [f"tensor `{n}`: in the checkpoint but not in the model" for n in plan.unexpected]
    return plan


# -- applying it -----------------------------------------------------------------------------------------
def _set_slot(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, attr, is_param = _slot(model, name)
    if is_param:
        module._parameters[attr] = value
    else:
        module._buffers[attr] = value


def _fresh(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The object that replaces a parameter on the meta device: one new CPU tensor holding ``value``, a
    Parameter again (with the original's attributes) where the slot held one."""
    data = torch.empty(value.shape, dtype=value.dtype)
    data.copy_(value)
    if not isinstance(target, nn.Parameter):
        return data
    param = nn.Parameter(data, requires_grad=target.requires_grad)
    param.__dict__.update(target.__dict__)
    return param


def _read_values(plan: LoadPlan, values: _Values, params: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Every value the model cannot take in place (meta or lazy targets), read and verified now; the others'
    checksums verified (one tensor at a time), so that a corrupt file fails before the model changes."""
    kept: dict[int, torch.Tensor] = {}
    for i, unit in enumerate(plan.units):
        target = params[unit.names[0]]
        if target.is_meta:
            kept[i] = _fresh(target, values.tensor(unit.source))
        elif _is_lazy(target):
            kept[i] = values.tensor(unit.source).clone()
        elif values.needs_verification():
            values.tensor(unit.source)
        if values.needs_verification():
            for name in unit.names:
                if name in values.names:
                    values.grad(name)
    return kept


def _fits(target: torch.Tensor, value: torch.Tensor) -> bool:
    if _is_lazy(target):
        return target.dtype == value.dtype
    return (target.dtype, tuple(target.shape)) == (value.dtype, tuple(value.shape))


def apply_load(model: nn.Module, plan: LoadPlan, values: _Values,
               named: list[tuple[str, torch.Tensor]] | None = None) -> LoadReport:
    """Carry out ``plan`` (whose problems the caller accepted); see the module docstring for the order."""
    params = dict(named_tensors(model) if named is None else named)
    kept = _read_values(plan, values, params)
    loaded: list[str] = []
    materialized: list[str] = []
    grads: list[str] = []
    with torch.no_grad():
        for i, unit in enumerate(plan.units):
            target = params[unit.names[0]]
            if i in kept and target.is_meta:
                if not _fits(target, kept[i]):
                    continue  # tolerated mismatch (strict=False): leave this one as it is
                holder = kept.pop(i)
                materialized.append(unit.names[0])
            else:
                value = kept.pop(i) if i in kept else values.tensor(unit.source, verify=False)
                if not _fits(target, value):
                    continue
                if _is_lazy(target):
                    target.materialize(value.shape)
                    materialized.append(unit.names[0])
                target.copy_(value)
                holder = target
                del value
            for name in unit.names:
                _set_slot(model, name, holder)
            loaded += [n for n in unit.names if n in values.names]
            if _restore_grad(holder, unit, values):
                grads.append(unit.names[0])
        if materialized:
            _finish_lazy_modules(model)
    return LoadReport(
        loaded=tuple(loaded), retied=tuple(plan.retied), filled=tuple(plan.filled), materialized=tuple(materialized),
        grads=tuple(grads), missing=tuple(plan.missing), unexpected=tuple(plan.unexpected),
        problems=tuple(plan.problems),
    )


def _restore_grad(param: torch.Tensor, unit: _Unit, values: _Values) -> bool:
    found = (values.grad(n, verify=False) for n in unit.names if n in values.names)
    grad = next((g for g in found if g is not None), None)
    if grad is None or not isinstance(param, nn.Parameter) or tuple(grad.shape) != tuple(param.shape):
        return False
    param.grad = grad.detach().to(device=param.device, dtype=param.dtype).clone()
    return True


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


def load_into(model: nn.Module, source: str | Path | Checkpoint, *, strict: bool = True, retie: bool = True,
              verify: bool = True) -> LoadReport:
    """Copy a checkpoint into ``model``, re-tie shared parameters, materialize lazy and meta-device ones.

    ``strict``: any mismatch of names, shapes, dtypes or ties raises :class:`ValidationError` listing every
    problem, before the model is changed. ``retie``: apply the checkpoint's tie groups to the model, fill
    model aliases that the file does not store from their canonical, and restore model ties that the file
    stores as equal copies. ``source`` is a path (any location; read one tensor at a time) or a Checkpoint.
    """
    if isinstance(source, Checkpoint):
        return _load(model, _CheckpointValues(source), strict, retie)
    with open_source(source) as opened:
        return _load(model, _SourceValues(opened, verify), strict, retie)


def _load(model: nn.Module, values: _Values, strict: bool, retie: bool) -> LoadReport:
    # One state dict for the whole load (a 20,000-tensor model takes ~0.1 s to list); it refuses models whose
    # non-tensor entries hold weights (quantized) and names the plain-data ones, which stay as they are.
    named, skipped = split_entries(model.state_dict(keep_vars=True).items())
    values.add(upgrades(model, versions_in(values.manifest.metadata), values.names, values.meta_of))
    plan = plan_load(model, values, retie=retie, named=named)
    if strict and plan.problems:
        raise ValidationError(plan.problems, subject=f"loading into {type(model).__name__}")
    report = apply_load(model, plan, values, named=named)
    return replace(report, skipped=tuple(skipped)) if skipped else report
