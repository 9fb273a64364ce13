"""Shared by the reliability tests (properties, fuzzing, crash safety): which formats exist, the hypothesis
profiles, and bit-exact comparison.

Hypothesis profiles: ``HYPOTHESIS_PROFILE=long`` runs the property tests with many more examples
(``make fuzz`` sets it); the default keeps the normal suite short.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from hypothesis import HealthCheck, settings

from paramio.formats.registry import FORMATS, SUFFIX

__all__ = ["SUFFIX", "formats_present", "PROFILE", "bits_equal"]


_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("paramio", max_examples=25, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
#: Explicit settings for the reliability tests (not loaded globally: other test modules keep theirs).
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "paramio")


def formats_present() -> list[str]:
    """The formats whose module exists in this checkout, in the registry's order."""
    out = []
    for name, target in FORMATS.items():
        if importlib.util.find_spec(target.partition(":")[0]) is not None:
            out.append(name)
    return out


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN payloads included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    # A fresh dense copy: .contiguous() keeps odd strides of size-1 dims, which view(uint8) refuses.
    flat_a = a.clone(memory_format=torch.contiguous_format).reshape(-1).view(torch.uint8)
    flat_b = b.clone(memory_format=torch.contiguous_format).reshape(-1).view(torch.uint8)
    return bool(torch.equal(flat_a, flat_b))
