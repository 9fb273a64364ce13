"""Module version records: what ``load_state_dict`` hands each module's ``_load_from_state_dict`` as
``local_metadata["version"]``, kept by saving and honoured by ``load_into``.

A state dict's ``_metadata`` maps each module's prefix to ``{"version": type(module)._version}``. Modules
whose layout changed between torch versions read it to upgrade an old checkpoint: BatchNorm (version 2)
adds ``num_batches_tracked`` to a version-1 state dict that lacks it. paramio records the versions that
differ from ``nn.Module``'s default of 1 in the manifest's metadata under ``paramio.module_versions`` (JSON
``{prefix: version}``; a ``.pt`` file also gets them in its own ``_metadata``, where stock ``torch.load``
and ``load_state_dict`` find them), and ``load_into`` asks each module that overrides
``_load_from_state_dict`` what it would add, exactly as ``load_state_dict`` would, before planning.

A module is asked on a *shadow*: a shallow copy whose parameters and buffers that the checkpoint holds are
empty tensors on the meta device and whose pre-hooks are left out, so the hook runs torch's own upgrade code
and no value of the model moves (an entry it adds keeps the model's current value where torch would).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["VERSIONS_KEY", "versions_of", "versions_in", "records_for_pt", "upgrades"]

#: Manifest metadata key: JSON ``{module prefix: version}`` for versions other than 1.
VERSIONS_KEY = "paramio.module_versions"


def versions_of(records: Mapping[object, object] | None) -> dict[str, int]:
    """``{prefix: version}`` from a state dict's ``_metadata`` (versions other than 1; other keys ignored)."""
    out: dict[str, int] = {}
    for prefix, record in (records or {}).items():
        if isinstance(prefix, str) and isinstance(record, Mapping):
            version = record.get("version")
            if isinstance(version, int) and not isinstance(version, bool) and version != 1:
                out[prefix] = version
    return out


def versions_in(metadata: Mapping[str, str]) -> dict[str, int] | None:
    """The versions a manifest's metadata records; None when it records none (a file from another tool)."""
    text = metadata.get(VERSIONS_KEY)
    if text is None:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return versions_of({p: {"version": v} for p, v in found.items()}) if isinstance(found, dict) else None


def records_for_pt(metadata: Mapping[str, str]) -> list[tuple[str, dict[str, int]]]:
    """``_metadata`` entries for a ``.pt`` file, in the form ``state_dict()`` makes them."""
    return [(prefix, {"version": v}) for prefix, v in (versions_in(metadata) or {}).items()]


def _shadow(module: nn.Module, held: Callable[[str], bool], prefix: str) -> nn.Module:
    """A shallow copy of ``module`` whose tensors the checkpoint holds are meta tensors (nothing real moves)."""
    shadow = object.__new__(type(module))
    shadow.__dict__.update(module.__dict__)
    for slot in ("_parameters", "_buffers"):
        own = getattr(module, slot)
        shadow.__dict__[slot] = {k: (torch.empty_like(v, device="meta") if v is not None and held(prefix + k) else v)
                                 for k, v in own.items()}
    shadow.__dict__["_modules"] = {}
    shadow.__dict__["_load_state_dict_pre_hooks"] = {}  # bound to the real module (lazy modules materialize)
    return shadow


def upgrades(model: nn.Module, versions: Mapping[str, int] | None, names: set[str],
             meta_of: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Entries that the version-aware ``_load_from_state_dict`` of ``model``'s modules add for a checkpoint
    holding ``names`` (``meta_of(name)``: an empty meta tensor of that entry's dtype and shape) recorded with
    ``versions`` (None: no records, as for a plain dict, where torch passes no version)."""
    added: dict[str, torch.Tensor] = {}
    base = nn.Module._load_from_state_dict
    for prefix, module in model.named_modules():
        if type(module)._load_from_state_dict is base:
            continue
        recorded = (versions or {}).get(prefix)
        if recorded == type(module)._version:
            continue
        dotted = f"{prefix}." if prefix else ""
        own = [dotted + k for k in (*module._parameters, *module._buffers)]
        state = {n: meta_of(n) for n in own if n in names}
        before = set(state)
        local = {"version": recorded} if recorded is not None else {}
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on copies into meta tensors: the shadow's
                _shadow(module, names.__contains__, dotted)._load_from_state_dict(
                    state, dotted, local, True, [], [], [])
        except Exception:  # noqa: BLE001 - a hook that cannot run on a shadow upgrades nothing; the plan says why
            continue
        for name, value in state.items():
            if name not in before and isinstance(value, torch.Tensor) and not value.is_meta:
                added[name] = value
    return added
