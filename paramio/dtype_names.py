"""The manifest's dtype names, their item sizes and the short names casts accept, without torch.

Kept apart from :mod:`paramio.dtypes` (which maps the names to torch dtypes) so that the manifest models
and the command line's option parsing load without importing torch: ``paramio --help`` answers at once.
"""

from __future__ import annotations

__all__ = ["NAMES", "ITEMSIZE", "FLOATING", "SHORT", "cast_name"]

#: manifest name -> bytes per element, in a fixed order (the manifest schema lists them in this order).
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "complex64": 8, "complex128": 16,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
    "bool": 1,
}
NAMES: tuple[str, ...] = tuple(ITEMSIZE)
#: The real floating dtypes: what ``dtype=`` casts apply to and go to.
FLOATING = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"})
#: Short names for casts (``--dtype bf16``) -> manifest names.
SHORT = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "f16": "float16",
         "fp32": "float32", "f32": "float32", "float": "float32", "fp64": "float64", "f64": "float64",
         "double": "float64", "fp8": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def cast_name(text: str) -> str:
    """The floating dtype a cast names: ``"bf16"``, ``"bfloat16"`` … -> ``"bfloat16"``; ValueError otherwise."""
    name = SHORT.get(text.lower(), text.lower())
    if name not in FLOATING:
        raise ValueError(f"dtype {text!r}: casts go to a floating dtype (bf16, fp16, fp32, fp64, e4m3, e5m2)")
    return name
