"""The device a caller asks tensors to be put on, checked before anything is read: torch's own failures
for a device it was not built with are an ``AssertionError`` ("Torch not compiled with CUDA enabled") or a
``RuntimeError`` listing every backend name, neither of which says what this machine has."""

from __future__ import annotations

import torch

from .errors import FormatError

__all__ = ["resolve_device", "available_devices"]


def available_devices() -> list[str]:
    """The devices tensors can be put on here: ``cpu``, each CUDA device, ``mps``, each XPU device."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that tensors can be moved to now, else a :class:`FormatError` naming
    it and the devices that are available."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        hint = " (torch calls GPUs 'cuda', or 'mps' on Apple silicon)" if str(device).lower() == "gpu" else ""
        raise FormatError(f"device {device!r}: not a device name torch knows{hint}; available here: "
                          f"{', '.join(available_devices())}") from e
    if target.type in ("cpu", "meta"):
        return target
    try:
        torch.empty(0, device=target)
    except Exception as e:  # noqa: BLE001 - torch raises AssertionError, RuntimeError ... for a missing backend
        raise FormatError(f"device {str(target)!r}: not available on this machine (torch {torch.__version__}); "
                          f"available here: {', '.join(available_devices())}") from e
    return target
