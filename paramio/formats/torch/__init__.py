"""PyTorch ``.pt`` / ``.pth`` / ``.bin``: a plain state dict written by ``torch.save``, so that
``model.load_state_dict(torch.load(p))`` works; ties are native storage sharing (an alias is the very tensor
of its canonical, a view a view of its base) and the manifest rides in the state dict's
``_metadata["paramio.manifest"]``, which survives ``torch.load(weights_only=True)``.

Reading uses ``torch.load(weights_only=True)`` only, memory-mapped where the file is a zip archive: a pickle
that would run code or build anything but tensors and containers is refused before it runs. Files from other
programs import too: a plain state dict, or a training checkpoint ``{"state_dict": ...}`` /
``{"model": ...}`` whose nested dicts flatten to dotted names. Non-tensor leaves (an epoch, a learning rate,
optimizer state outside the weights) are skipped and their names listed in the metadata under
``paramio.skipped``: they are common in training checkpoints and are not parameters, so refusing the file
would only make users unpack it by hand, while listing them keeps the skip visible. Names that share storage
become ties (canonical: the first key); tensors that overlap without being the same view have no faithful
form without a paramio manifest and are refused (both decided by the core, as for saving).

Modules: ``writer`` (torch.save of the state dict), ``zippatch`` (checksums put into the finished
archive), ``reader`` (torch.load with weights_only and flattening), ``legacy`` (bounds of pre-zip files).
"""

from __future__ import annotations

from ..base import MANIFEST_KEY, SKIPPED_KEY, Format
from .reader import TorchReader
from .writer import TorchWriter

__all__ = ["TorchFormat", "TorchReader", "TorchWriter", "MANIFEST_KEY", "SKIPPED_KEY"]


class TorchFormat(Format):
    name = "torch"
    suffixes = (".pt", ".pth", ".bin")

    reader_class = TorchReader
    writer_class = TorchWriter
