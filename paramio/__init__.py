"""paramio: move the named parameters of PyTorch models between software without losing identity.

Tied parameters (a layer reused twice, an embedding tied to an output head) stay one tensor through
safetensors, HDF5, ONNX and ``.pt`` files, recorded in a manifest that every file carries.

The public names below are imported on first use (PEP 562), so that ``import paramio`` and
``paramio --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__

#: public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "Audit": ".audit",
    "audit": ".audit",
    "Checkpoint": ".checkpoint",
    "collect": ".checkpoint",
    "convert": ".convert",
    "Diff": ".diff",
    "diff": ".diff",
    "TensorDiff": ".diff",
    "Manifest": ".manifest",
    "Signature": ".manifest",
    "TensorEntry": ".manifest",
    "TieGroup": ".manifest",
    "load": ".reading",
    "read_manifest": ".reading",
    "LoadReport": ".rebuild",
    "load_into": ".rebuild",
    "report": ".report",
    "Stats": ".stats",
    "TensorStats": ".stats",
    "stats": ".stats",
    "find_ties": ".ties",
    "Report": ".validation",
    "signature": ".validation",
    "validate": ".validation",
    "save": ".writing",
}
#: public submodules, imported on first use too: ``paramio.dcp`` imports torch.distributed.checkpoint, which
#: most users of ``import paramio`` never need.
_SUBMODULES = ("dcp",)

__all__ = [
    "__version__",
    "errors",
    "Checkpoint",
    "Manifest",
    "Signature",
    "TensorEntry",
    "TieGroup",
    "LoadReport",
    "Diff",
    "TensorDiff",
    "Audit",
    "Stats",
    "TensorStats",
    "Report",
    "collect",
    "find_ties",
    "save",
    "load",
    "load_into",
    "read_manifest",
    "convert",
    "diff",
    "signature",
    "validate",
    "audit",
    "stats",
    "report",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from . import dcp  # noqa: F401 - a public submodule, not in __all__
    from .audit import Audit, audit
    from .checkpoint import Checkpoint, collect
    from .convert import convert
    from .diff import Diff, TensorDiff, diff
    from .manifest import Manifest, Signature, TensorEntry, TieGroup
    from .reading import load, read_manifest
    from .rebuild import LoadReport, load_into
    from .report import report
    from .stats import Stats, TensorStats, stats
    from .ties import find_ties
    from .validation import Report, signature, validate
    from .writing import save


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        # A submodule (paramio.dcp, or paramio.limits, as an eager import used to leave them bound).
        if name in _SUBMODULES or (not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}")):
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'paramio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing a submodule binds it as an attribute of its package. Where a submodule is named like the
    public function it defines (``paramio.convert``, ``paramio.diff``, ``paramio.stats``, ``paramio.audit``,
    ``paramio.report``), that would shadow the function: ``import paramio.diff`` anywhere, then
    ``paramio.diff(a, b)`` would call a module. Such bindings are dropped, so the name keeps resolving to
    the function (``sys.modules`` still holds the submodule for ``from paramio.diff import …``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _PUBLIC and name == _PUBLIC[name].lstrip("."):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
