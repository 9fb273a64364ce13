"""Per-tensor statistics, streaming: moments, extremes, norms, sparsity, NaN/Inf counts and histograms.

One implementation for ``paramio stats``, ``inspect --stats``, ``validate --finite`` and the report. Every
figure is accumulated in float64 (exact for bf16/fp16/fp8 inputs) in chunks, so a tensor of any size costs a
few float64 chunks beyond its own (mapped) data; the moments, extremes, norm and histogram are over the
finite values only, so that one NaN does not hide the rest. Integer and bool tensors get exact extremes
and the fields that make sense for them; complex tensors their magnitude's norm and extremes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .manifest import Manifest
from .stored import Stored, open_stored

__all__ = ["TensorStats", "Stats", "stats", "tensor_stats", "nonfinite_counts", "parameter_counts",
           "format_count"]

_CHUNK = 1 << 22  # elements converted to float64 at a time (32 MiB)


@dataclass(frozen=True)
class TensorStats:
    """The statistics of one stored tensor (``aliases``: the other names of its tie group).

    ``mean``/``std`` (population), ``min``/``max``/``absmax`` and ``l2_norm`` are over the finite values
    (None when there are none, or for fields a dtype lacks: complex tensors have no order); ``zero_fraction``
    is over all elements; ``hist_edges`` has ``bins + 1`` edges over the finite min..max (one bin per value
    for integers of a narrow range) and ``sum(hist_counts)`` is the finite count."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = "parameter"
    numel: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | int | None = None
    max: float | int | None = None
    absmax: float | int | None = None
    l2_norm: float | None = None
    zero_fraction: float = 0.0
    nan_count: int = 0
    posinf_count: int = 0
    neginf_count: int = 0
    hist_edges: tuple[float, ...] = ()
    hist_counts: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def inf_count(self) -> int:
        return self.posinf_count + self.neginf_count

    @property
    def finite_count(self) -> int:
        return self.numel - self.nan_count - self.inf_count

    @property
    def nonfinite(self) -> bool:
        return bool(self.nan_count or self.inf_count)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats as strings "nan"/"inf"/"-inf", as JSON has none)."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "kind": self.kind}
        for key in ("numel", "mean", "std", "min", "max", "absmax", "l2_norm", "zero_fraction", "nan_count",
                    "posinf_count", "neginf_count"):
            out[key] = json_number(getattr(self, key))
        out["hist_edges"] = [json_number(e) for e in self.hist_edges]
        out["hist_counts"] = list(self.hist_counts)
        out["aliases"] = list(self.aliases)
        return out


def json_number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@dataclass(frozen=True)
class Stats:
    """Statistics of a whole checkpoint. ``tensors[name]``: every name (stored tensors and views in file
    order, then aliases, each giving its canonical's figures); ``parameters_unique`` counts a tie once,
    ``parameters_by_name`` once per name; ``nonfinite``: the names holding NaN or Inf."""

    source: str
    tensors: Mapping[str, TensorStats] = field(default_factory=dict)
    parameters_unique: int = 0
    parameters_by_name: int = 0
    shared: int = 0
    names_per_tie: tuple[int, ...] = ()

    @property
    def stored(self) -> list[TensorStats]:
        """One entry per stored tensor (and view), in file order: what a table lists."""
        return [s for name, s in self.tensors.items() if s.name == name]

    @property
    def nonfinite(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stored if s.nonfinite)

    def summary(self) -> str:
        """E.g. "124.4M parameters (124.4M unique, 38.6M shared by 2 names)"."""
        return summary_line(self.parameters_unique, self.shared, self.names_per_tie)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "summary": self.summary(), "parameters_unique": self.parameters_unique,
                "parameters_by_name": self.parameters_by_name, "nonfinite": list(self.nonfinite),
                "tensors": [s.to_json() for s in self.stored]}


def format_count(n: int) -> str:
    """1234 -> "1.2K", 124439808 -> "124.4M"."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def summary_line(unique: int, shared: int, names_per_tie: Iterable[int]) -> str:
    sizes = sorted(set(names_per_tie))
    if not sizes:
        return f"{format_count(unique)} parameters ({format_count(unique)} unique, none shared)"
    by = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return f"{format_count(unique)} parameters ({format_count(unique)} unique, {format_count(shared)} shared by {by} names)"


def parameter_counts(manifest: Manifest) -> tuple[int, int, int, tuple[int, ...]]:
    """(unique, by name, shared, names per tie group) over the parameters (not buffers or gradients):
    a tie group counts once in ``unique`` and once per name in ``by name``; ``shared`` is the tied
    tensors' size, counted once."""
    numel = {t.name: (t.numel, t.kind) for t in manifest.tensors}
    for v in manifest.views:
        numel[v.name] = (math.prod(v.shape), v.kind)
    unique = sum(t.numel for t in manifest.tensors if t.kind == "parameter")
    by_name, shared, sizes = unique, 0, []
    by_name += sum(math.prod(v.shape) for v in manifest.views if v.kind == "parameter")
    for group in manifest.ties:
        n, kind = numel[group.canonical]
        if kind != "parameter":
            continue
        by_name += n * len(group.aliases)
        shared += n
        sizes.append(len(group.names))
    return unique, by_name, shared, tuple(sizes)


# -- one tensor ------------------------------------------------------------------------------------------
class _Moments:
    """Running count, mean and sum of squared deviations (Chan et al.'s parallel combination), extremes,
    sum of squares, zeros and non-finite counts, over float64 chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo: float | int | None = None
        self.hi: float | int | None = None
        self.sumsq = 0.0
        self.zeros = 0
        self.nan = self.posinf = self.neginf = 0

    def add(self, x: torch.Tensor) -> None:
        """A chunk of finite float64 values."""
        n = x.numel()
        if not n:
            return
        var, mean = torch.var_mean(x, correction=0)
        mean_c, m2_c = float(mean), float(var) * n
        total = self.n + n
        delta = mean_c - self.mean
        self.mean += delta * n / total
        self.m2 += m2_c + delta * delta * self.n * n / total
        self.n = total
        self.sumsq += float(torch.dot(x, x))
        self.zeros += n - int(torch.count_nonzero(x))

    def extremes(self, lo: float | int, hi: float | int) -> None:
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)


def _chunks(flat: torch.Tensor) -> Iterable[torch.Tensor]:
    for start in range(0, flat.numel(), _CHUNK):
        yield flat[start:start + _CHUNK]


def _finite64(chunk: torch.Tensor, acc: _Moments) -> torch.Tensor:
    """The chunk in float64 without its NaN/Inf (counted into ``acc``)."""
    x = chunk.to(torch.float64)
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    acc.nan += int(torch.isnan(x).sum())
    acc.posinf += int((x == math.inf).sum())
    acc.neginf += int((x == -math.inf).sum())
    return x[finite]


def nonfinite_counts(tensor: torch.Tensor) -> tuple[int, int, int]:
    """(NaN, +Inf, −Inf) counts of a tensor, chunk by chunk (zeros for integer and bool tensors; a complex
    element counts when either part is NaN or infinite)."""
    t = tensor.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if not t.is_floating_point() or finite_range(t.reshape(-1)) is not None:
        return 0, 0, 0
    acc = _Moments()
    for chunk in _chunks(t.reshape(-1)):
        if not bool(torch.isfinite(chunk).all()):
            _finite64(chunk, acc)
    if tensor.is_complex() and (acc.nan or acc.posinf or acc.neginf):
        parts = torch.view_as_real(tensor.detach()).reshape(-1, 2)
        return (int(torch.isnan(parts).any(dim=1).sum()), int(torch.isposinf(parts).any(dim=1).sum()),
                int(torch.isneginf(parts).any(dim=1).sum()))
    return acc.nan, acc.posinf, acc.neginf


def _histogram(flat: torch.Tensor, lo: float, hi: float, bins: int, integer: bool
               ) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Edges and counts over the finite values of ``flat`` in lo..hi (a second pass for large tensors)."""
    if integer and hi - lo + 1 <= bins:  # one bin per value: 0/1 for bools, small ids, counters
        bins, lo, hi = int(hi - lo + 1), lo - 0.5, hi + 0.5
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.zeros(bins, dtype=torch.float64)
    scratch = _Moments()
    for chunk in _chunks(flat):
        x = _finite64(chunk, scratch)
        if x.numel():
            counts += torch.histc(x, bins, lo, hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return tuple(float(e) for e in edges), tuple(int(c) for c in counts)


#: Elements per chunk on the one-pass path. Large: each torch call wakes the intra-op threads, and on a
#: busy machine every wake-up can wait a scheduler tick, so fewer, larger calls win (measured: 256K-element
#: chunks took 1.6x a plain whole-tensor loop there, 4M-element ones do not); 32 MiB of float64 at most.
_FAST_CHUNK = _CHUNK


def finite_range(flat: torch.Tensor) -> tuple[float, float] | None:
    """(min, max) in the tensor's own dtype when every value is finite (torch's min and max propagate NaN
    and an infinity is an extreme), else None; None too for dtypes without a native min/max (float8)."""
    try:
        lo, hi = torch.aminmax(flat)
    except (RuntimeError, NotImplementedError):
        return None
    lo_f, hi_f = float(lo), float(hi)
    return (lo_f, hi_f) if math.isfinite(lo_f) and math.isfinite(hi_f) else None


def _clean_float_stats(flat: torch.Tensor, bins: int) -> dict[str, Any] | None:
    """Every figure in one pass over float64 chunks, for a float tensor that holds no NaN/Inf (the usual
    case: the extremes, found first in the tensor's own dtype, say so and give the histogram's range)."""
    extremes = finite_range(flat)
    if extremes is None:
        return None
    lo, hi = extremes
    h_lo, h_hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    counts = torch.zeros(bins, dtype=torch.float64)
    total = squares = 0.0
    zeros = 0
    n = flat.numel()
    for start in range(0, n, _FAST_CHUNK):
        x = flat[start:start + _FAST_CHUNK].to(torch.float64)
        total += float(x.sum())
        squares += float(torch.dot(x, x))
        zeros += x.numel() - int(torch.count_nonzero(x))
        counts += torch.histc(x, bins, h_lo, h_hi)
    mean = total / n
    variance = squares / n - mean * mean
    if variance < 1e-7 * mean * mean:  # a large common offset: the shortcut cancels; sum the deviations
        variance = sum(float(torch.sum((flat[i:i + _FAST_CHUNK].to(torch.float64) - mean) ** 2))
                       for i in range(0, n, _FAST_CHUNK)) / n
    edges = torch.linspace(h_lo, h_hi, bins + 1, dtype=torch.float64)
    return dict(mean=mean, std=math.sqrt(max(variance, 0.0)), min=lo, max=hi, absmax=max(abs(lo), abs(hi)),
                l2_norm=math.sqrt(squares), zero_fraction=zeros / n, hist_edges=tuple(float(e) for e in edges),
                hist_counts=tuple(int(c) for c in counts))


def tensor_stats(tensor: torch.Tensor, *, name: str = "", bins: int = 64, kind: str = "parameter",
                 aliases: tuple[str, ...] = ()) -> TensorStats:
    """The statistics of one tensor (see :class:`TensorStats`)."""
    from .dtypes import dtype_name

    t = tensor.detach()
    base = dict(name=name, dtype=dtype_name(t.dtype), shape=tuple(t.shape), kind=kind, numel=t.numel(),
                aliases=aliases)
    if not t.numel():
        return TensorStats(**base)
    if t.is_complex():
        return _complex_stats(t, base)
    flat = t.reshape(-1)
    if t.is_floating_point():
        clean = _clean_float_stats(flat, bins)
        if clean is not None:
            return TensorStats(**base, **clean)
    acc = _Moments()
    integer = not t.is_floating_point()
    for chunk in _chunks(flat):
        if integer:
            values = (chunk.view(torch.uint8) if chunk.dtype == torch.bool else chunk).contiguous().numpy()
            acc.extremes(values.min().item(), values.max().item())
            acc.add(torch.from_numpy(values.astype(np.float64)))
        else:
            x = _finite64(chunk, acc)
            if x.numel():
                lo, hi = torch.aminmax(x)
                acc.extremes(float(lo), float(hi))
                acc.add(x)
    edges: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    if acc.n:
        edges, counts = _histogram(flat, float(acc.lo), float(acc.hi), bins, integer)
    absmax = None if acc.lo is None else max(abs(acc.lo), abs(acc.hi))
    return TensorStats(
        **base, mean=acc.mean if acc.n else None, std=math.sqrt(max(acc.m2, 0.0) / acc.n) if acc.n else None,
        min=acc.lo, max=acc.hi, absmax=absmax, l2_norm=math.sqrt(acc.sumsq) if acc.n else None,
        zero_fraction=acc.zeros / t.numel(), nan_count=acc.nan, posinf_count=acc.posinf, neginf_count=acc.neginf,
        hist_edges=edges, hist_counts=counts,
    )


def _complex_stats(t: torch.Tensor, base: dict[str, Any]) -> TensorStats:
    """Complex tensors: the norm and magnitude extremes over the finite elements, zeros, non-finite counts."""
    nan, posinf, neginf = nonfinite_counts(t)
    sumsq, absmax, zeros = 0.0, None, 0
    for chunk in _chunks(t.reshape(-1)):
        parts = torch.view_as_real(chunk.to(torch.complex128)).reshape(-1, 2)
        parts = parts[torch.isfinite(parts).all(dim=1)]
        if not parts.numel():
            continue
        mags = torch.hypot(parts[:, 0], parts[:, 1])
        top = float(mags.max())
        absmax = top if absmax is None else max(absmax, top)
        sumsq += float(torch.dot(mags, mags))
        zeros += int((mags == 0).sum())
    return TensorStats(**base, absmax=absmax, l2_norm=None if absmax is None else math.sqrt(sumsq),
                       zero_fraction=zeros / t.numel(), nan_count=nan, posinf_count=posinf, neginf_count=neginf)


# -- a whole checkpoint -------------------------------------------------------------------------------------
def stats(source: str | Path | nn.Module | Mapping[str, torch.Tensor], *, bins: int = 64, verify: bool = True,
          names: Iterable[str] | None = None) -> Stats:
    """Statistics of every stored tensor of ``source`` (a path to any location, a model, a mapping or a
    Checkpoint), read one at a time with checksums verified (unless ``verify=False``). ``names``: only these
    stored tensors (the counts still cover the whole checkpoint)."""
    if bins < 1:
        raise ValueError(f"bins={bins}: need at least one bin")
    with open_stored(source, verify=verify) as stored:
        return stats_of(stored, bins=bins, names=names)


def stats_of(stored: Stored, *, bins: int = 64, names: Iterable[str] | None = None) -> Stats:
    """:func:`stats` over an opened :class:`Stored`."""
    from .ties import view_of

    manifest = stored.manifest
    wanted = None if names is None else set(names)
    aliases = {g.canonical: g.aliases for g in manifest.ties}
    views_of: dict[str, list] = {}
    for v in manifest.views:
        views_of.setdefault(v.base, []).append(v)
    out: dict[str, TensorStats] = {}
    for entry in manifest.tensors:
        if wanted is not None and entry.name not in wanted:
            continue
        tensor = stored.read(entry.name)
        out[entry.name] = tensor_stats(tensor, name=entry.name, bins=bins, kind=entry.kind,
                                       aliases=aliases.get(entry.name, ()))
        for v in views_of.get(entry.name, ()):
            out[v.name] = tensor_stats(view_of(tensor, v), name=v.name, bins=bins, kind=v.kind,
                                       aliases=aliases.get(v.name, ()))
        del tensor
    for group in manifest.ties:
        if group.canonical in out:
            for alias in group.aliases:
                out[alias] = out[group.canonical]
    unique, by_name, shared, sizes = parameter_counts(manifest)
    return Stats(stored.label, out, unique, by_name, shared, sizes)
