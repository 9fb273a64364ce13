"""paramio: move the named parameters of PyTorch models between software without losing identity.

Tied parameters (a layer reused twice, an embedding tied to an output head) stay one tensor through
safetensors, HDF5, ONNX and ``.pt`` files, recorded in a manifest that every file carries.
"""

from . import errors
from .audit import Audit, audit
from ._version import __version__
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



def __getattr__(name: str) -> object:
    """``paramio.dcp`` imported on first use: it imports torch.distributed.checkpoint, which most users of
    ``import paramio`` never need."""
    if name == "dcp":
        import importlib

        return importlib.import_module(".dcp", __name__)
    raise AttributeError(f"module 'paramio' has no attribute {name!r}")


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
