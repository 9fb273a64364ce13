"""Compare two checkpoints, in any formats: names, dtypes, shapes, values and ties.

Streaming: the two sides are read one tensor each at a time (from paths, through their locations), and
compared in chunks, so a diff holds two tensors and a few float64 chunks whatever the checkpoints' size.
Equality is exact in the tensors' own dtypes: integers (int64 beyond 2**53, uint64) are compared as
integers, complex tensors by both parts; only the summary figures (max_abs, rel_change, cosine) are float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .stats import _FAST_CHUNK, finite_range
from .stored import Stored, open_stored
from .ties import tie_differences, tie_partition

__all__ = ["Diff", "TensorDiff", "diff"]

_CHUNK = 1 << 22  # elements compared at a time, so a diff holds a few float64 chunks, not whole copies


@dataclass(frozen=True)
class TensorDiff:
    """How one name compares. ``reason`` is "" (equal within the tolerance), "dtype", "shape" or "values";
    ``max_abs`` the largest absolute difference, ``rel_change`` ‖a−b‖/‖a‖, ``cosine`` ⟨a,b⟩/(‖a‖‖b‖) (1.0 when
    both are zero, 0.0 when one is; over the elements finite in both); ``a``/``b`` dtype and shape."""

    name: str
    reason: str
    max_abs: float = 0.0
    rel_change: float = 0.0
    cosine: float = 1.0
    a: str = ""
    b: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.reason)

    @property
    def rel_l2(self) -> float:
        """Former name of ``rel_change``."""
        return self.rel_change


@dataclass(frozen=True)
class Diff:
    """``equal`` when both hold the same names, ties, dtypes, shapes and values (within tolerance).

    ``details[name]`` for every name in both (an alias's entry is its canonical's comparison, under its own
    name, unless the two sides tie it differently)."""

    only_in_a: tuple[str, ...] = ()
    only_in_b: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    ties_changed: bool = False
    max_abs: float = 0.0
    details: Mapping[str, TensorDiff] = field(default_factory=dict)
    tie_differences: tuple[str, ...] = ()
    metadata_changed: bool = False
    tie_groups: tuple[tuple[str, ...], ...] = ()  # A's tie groups, canonical first: what a display collapses

    @property
    def equal(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed or self.ties_changed)


def _key(stored: Stored, name: str) -> str:
    """What a name reads: its canonical (a view is its own)."""
    return stored.canonical(name)


def diff(a: object, b: object, *, tolerance: float = 0.0, values_only: bool = False) -> Diff:
    """Compare ``a`` and ``b`` (paths to any location, checkpoints, models or mappings).

    A tensor is *changed* when its shape differs, its dtype differs (unless ``values_only``: then values are
    compared after casting, e.g. a bf16 copy of an fp32 checkpoint with a tolerance), or its values differ
    by more than ``tolerance`` (absolute; with 0, any difference in the tensor's own dtype counts).
    ``max_abs`` is the largest absolute difference over all common tensors.
    """
    with open_stored(a) as sa, open_stored(b) as sb:
        names_a, names_b = sa.manifest.names(), sb.manifest.names()
        in_b, in_a = set(names_b), set(names_a)
        details: dict[str, TensorDiff] = {}
        changed: list[str] = []
        overall = 0.0
        done: dict[tuple[str, str], TensorDiff] = {}
        for name in names_a:
            if name not in in_b:
                continue
            pair = (_key(sa, name), _key(sb, name))
            result = done.get(pair)
            if result is None:
                result = done[pair] = _compare_pair(name, sa.tensor(pair[0]), sb.tensor(pair[1]), tolerance,
                                                    values_only)
            elif result.name != name:
                result = dataclasses.replace(result, name=name)
            details[name] = result
            if result.reason != "shape":
                overall = max(overall, result.max_abs)
            if result.changed:
                changed.append(name)
        tie_lines = [f"`{name}`: tied to {{{', '.join(sorted(ga))}}} in A, {{{', '.join(sorted(gb))}}} in B"
                     for name, ga, gb in tie_differences(tie_partition(names_a, sa.manifest.ties),
                                                         tie_partition(names_b, sb.manifest.ties))]
        return Diff(only_in_a=tuple(n for n in names_a if n not in in_b),
                    only_in_b=tuple(n for n in names_b if n not in in_a), changed=tuple(changed),
                    ties_changed=bool(tie_lines), max_abs=overall, details=details,
                    tie_differences=tuple(tie_lines),
                    metadata_changed=sa.manifest.metadata != sb.manifest.metadata,
                    tie_groups=tuple(g.names for g in sa.manifest.ties))


def _signature(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def _compare_pair(name: str, x: torch.Tensor, y: torch.Tensor, tolerance: float, values_only: bool
                  ) -> TensorDiff:
    sig_a, sig_b = _signature(x), _signature(y)
    if x.shape != y.shape:
        return TensorDiff(name, "shape", math.inf, math.inf, math.nan, sig_a, sig_b)
    max_abs, rel, cosine = compare_values(x, y) if x.numel() else (0.0, 0.0, 1.0)
    if x.dtype != y.dtype and not values_only:
        reason = "dtype"  # a change whatever the values; their difference is still reported
    elif max_abs > tolerance:
        reason = "values"
    else:
        reason = ""
    return TensorDiff(name, reason, max_abs, rel, cosine, sig_a, sig_b)


# -- the numbers ------------------------------------------------------------------------------------------
@dataclass
class _Sums:
    """Float64 running sums over chunks: max |a−b|, ‖a−b‖², ‖a‖², ‖b‖², ⟨a,b⟩."""

    max_abs: float = 0.0
    err2: float = 0.0
    a2: float = 0.0
    b2: float = 0.0
    dot: float = 0.0

    def result(self) -> tuple[float, float, float]:
        if math.isinf(self.max_abs):
            return math.inf, math.inf, _cosine(self)
        rel = math.sqrt(self.err2) / math.sqrt(self.a2) if self.a2 > 0 else (0.0 if self.err2 == 0 else math.inf)
        return self.max_abs, rel, _cosine(self)


def _cosine(s: _Sums) -> float:
    if s.max_abs == 0 and s.err2 == 0:
        return 1.0  # equal: exactly, not 1 - 1e-16 from rounding
    if s.a2 == 0 or s.b2 == 0:
        return 1.0 if s.a2 == s.b2 else 0.0
    return max(-1.0, min(1.0, s.dot / (math.sqrt(s.a2) * math.sqrt(s.b2))))


def compare_values(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """(max_abs, rel_change, cosine) of two tensors of one shape, any dtypes; max_abs is 0 exactly when
    the values are equal in their own dtypes (NaNs in the same places count as equal)."""
    fx, fy = x.detach().reshape(-1), y.detach().reshape(-1)
    sums = _Sums()
    if fx.is_complex() or fy.is_complex():
        step = _complex_chunk
    elif fx.is_floating_point() or fy.is_floating_point():
        step = _float_chunk
    else:
        step = _int_chunk
    chunk = _CHUNK
    if step is _float_chunk and finite_range(fx) is not None and finite_range(fy) is not None:
        step, chunk = _clean_float_chunk, _FAST_CHUNK  # no NaN/Inf on either side: one pass, in cache
    for start in range(0, fx.numel(), chunk):
        step(fx[start:start + chunk], fy[start:start + chunk], sums)
        if math.isinf(sums.max_abs):
            break
    return sums.result()


def _clean_float_chunk(x: torch.Tensor, y: torch.Tensor, sums: _Sums) -> None:
    """Finite values only: ``x - y`` is 0 exactly when they are equal (IEEE subtraction), so no masks."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    d = x - y
    lo, hi = torch.aminmax(d)
    sums.max_abs = max(sums.max_abs, -float(lo), float(hi))
    sums.err2 += float(torch.dot(d, d))
    sums.a2 += float(torch.dot(x, x))
    sums.b2 += float(torch.dot(y, y))
    sums.dot += float(torch.dot(x, y))


def _accumulate(d: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sums: _Sums) -> None:
    """Add one chunk's float64 differences ``d`` and values to the sums (non-finite values left out of the
    norms; an infinite difference makes max_abs infinite)."""
    if d.numel():
        sums.max_abs = max(sums.max_abs, float(d.max()))
    finite = torch.isfinite(x) & torch.isfinite(y)
    if not bool(finite.all()):
        x, y, d = x[finite], y[finite], d[finite]
    sums.err2 += float(torch.dot(d, d))
    sums.a2 += float(torch.dot(x, x))
    sums.b2 += float(torch.dot(y, y))
    sums.dot += float(torch.dot(x, y))


def _float_chunk(x: torch.Tensor, y: torch.Tensor, sums: _Sums) -> None:
    x, y = x.to(torch.float64), y.to(torch.float64)  # exact for every real float dtype paramio stores
    nan_x, nan_y = torch.isnan(x), torch.isnan(y)
    if not torch.equal(nan_x, nan_y):
        sums.max_abs = math.inf
        return
    d = (x - y).abs()
    same = x == y  # equal infinities give nan when subtracted
    d = torch.where(same | nan_x, torch.zeros_like(d), d)
    _accumulate(d, x, y, sums)


def _complex_chunk(x: torch.Tensor, y: torch.Tensor, sums: _Sums) -> None:
    x, y = x.to(torch.complex128), y.to(torch.complex128)  # both parts, each exact
    xr, yr = torch.view_as_real(x).reshape(-1), torch.view_as_real(y).reshape(-1)
    nan_x, nan_y = torch.isnan(xr), torch.isnan(yr)
    if not torch.equal(nan_x, nan_y):
        sums.max_abs = math.inf
        return
    part = torch.where((xr == yr) | nan_x, torch.zeros_like(xr), xr - yr).reshape(-1, 2)
    d = torch.hypot(part[:, 0], part[:, 1])  # |a - b| per element, without underflow
    if torch.isnan(d).any():  # an infinity against another value
        sums.max_abs = math.inf
        return
    finite = torch.isfinite(xr) & torch.isfinite(yr)
    finite = finite.reshape(-1, 2).all(dim=1)
    if d.numel():
        sums.max_abs = max(sums.max_abs, float(d.max()))
    xs, ys = xr.reshape(-1, 2)[finite].reshape(-1), yr.reshape(-1, 2)[finite].reshape(-1)
    dd = d[finite]
    sums.err2 += float(torch.dot(dd, dd))
    sums.a2 += float(torch.dot(xs, xs))
    sums.b2 += float(torch.dot(ys, ys))
    sums.dot += float(torch.dot(xs, ys))  # Re⟨a, b⟩: complex numbers as pairs of reals


def _numpy(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.uint8) if t.dtype == torch.bool else t).contiguous().numpy()


def _int_chunk(x: torch.Tensor, y: torch.Tensor, sums: _Sums) -> None:
    """Integers and bools: exact inequality in the integers' own types, float64 only for the figures."""
    nx, ny = _numpy(x), _numpy(y)
    neq = _int_not_equal(nx, ny)
    fx, fy = nx.astype(np.float64), ny.astype(np.float64)
    d = np.abs(fx - fy)
    close = neq & (d == 0)  # different, but float64 rounds both to one value (beyond 2**53)
    if close.any():
        d[close] = _exact_gap(nx[close], ny[close])
    _accumulate(torch.from_numpy(d), torch.from_numpy(fx), torch.from_numpy(fy), sums)


def _int_not_equal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype == y.dtype:
        return x != y
    sx, sy = np.issubdtype(x.dtype, np.signedinteger), np.issubdtype(y.dtype, np.signedinteger)
    if sx == sy:
        wide = np.int64 if sx else np.uint64
        return x.astype(wide) != y.astype(wide)
    signed, unsigned = (x, y) if sx else (y, x)  # numpy would compare these through float64
    return (signed < 0) | (signed.astype(np.uint64) != unsigned.astype(np.uint64))


def _exact_gap(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x − y| of integers that float64 cannot tell apart (so the gap is small), as float64."""
    if x.dtype == y.dtype and x.dtype == np.uint64:
        return np.where(x >= y, x - y, y - x).astype(np.float64)
    if x.dtype == y.dtype:
        return np.abs(x.astype(np.int64) - y.astype(np.int64)).astype(np.float64)
    return np.array([abs(int(a) - int(b)) for a, b in zip(x.tolist(), y.tolist())], dtype=np.float64)
