"""How a manifest looks on a terminal: the ``paramio inspect`` table and its one-line summary.

Shared by the CLI and ``make demo`` (which prints the table the command would), so it lives in the library
rather than in the command. Rendering only: the figures come from :mod:`paramio.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from .dtypes import DTYPES
from .manifest import Manifest

__all__ = ["manifest_table", "summary", "count", "size", "figure"]

#: inspect --stats columns: (header, TensorStats field); imported lazily, so no reader is loaded for them
_FIGURES = (("mean", "mean"), ("std", "std"), ("min", "min"), ("max", "max"), ("norm", "l2_norm"),
            ("zeros", "zero_fraction"), ("nan/inf", None))


def _rows(manifest: Manifest) -> Iterator[tuple[str, str, tuple[int, ...], str, str, str | None]]:
    """(name, dtype, shape, kind, tied-to note, checksum) per name: each stored tensor, then its aliases
    and its views."""
    aliases = {g.canonical: g.aliases for g in manifest.ties}
    views: dict[str, list] = {}
    for v in manifest.views:
        views.setdefault(v.base, []).append(v)
    for t in manifest.tensors:
        yield t.name, t.dtype, t.shape, t.kind, _aliases_note(aliases.get(t.name, ())), t.checksum
        for a in aliases.get(t.name, ()):
            yield a, t.dtype, t.shape, t.kind, f"alias of {t.name}", None
        for v in views.get(t.name, ()):
            note = f"view of {t.name} (offset {v.offset}, stride {list(v.stride)})"
            yield v.name, t.dtype, v.shape, v.kind, note, None
            for a in aliases.get(v.name, ()):
                yield a, t.dtype, v.shape, v.kind, f"alias of {v.name}", None


def _aliases_note(aliases: Sequence[str]) -> str:
    return f"aliases: {', '.join(aliases)}" if aliases else ""


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def figure(row: Any, field: str | None) -> str:
    """One statistics cell of a :class:`paramio.stats.TensorStats`: numbers in 4 significant digits, the
    zero fraction in percent, NaN/Inf counts (blank when there are none)."""
    if field is None:
        return f"{row.nan_count:,}/{row.inf_count:,}" if row.nonfinite else ""
    value = getattr(row, field)
    if field == "zero_fraction":
        return f"{100 * value:.1f}%" if row.numel else "—"
    return _fmt(value)


def manifest_table(manifest: Manifest, stats: Mapping[str, Any] | None = None,
                   title: str | None = None, *, checksums: bool = True) -> Table:
    """The ``paramio inspect`` table: one row per name, aliases and views included."""
    table = Table(title=title, title_justify="left", header_style="bold")
    columns = ("name", "dtype", "shape", "numel", "tied to") + (("checksum",) if checksums else ())
    for column in columns:
        table.add_column(column, justify="right" if column == "numel" else "left", overflow="fold")
    if stats is not None:
        for column, _ in _FIGURES:
            table.add_column(column, justify="right")
    for name, dtype, shape, kind, note, checksum in _rows(manifest):
        label = Text(name) + (Text(f" ({kind})", style="dim") if kind != "parameter" else Text())
        cells: list[Any] = [label, dtype, str(list(shape)), f"{math.prod(shape):,}", note]
        if checksums:
            cells.append(checksum or "")
        if stats is not None:
            row = stats.get(name)
            cells += [figure(row, f) if row is not None else "" for _, f in _FIGURES]
        style = "dim" if note.startswith("alias of") else None
        table.add_row(*cells, style=style)
    return table


def summary(manifest: Manifest) -> str:
    """One line: stored tensors, tie groups and aliases, views, gradients, bytes."""
    stored = [t for t in manifest.tensors if t.kind != "gradient"]
    grads = len(manifest.tensors) - len(stored)
    nbytes = sum(t.numel * DTYPES[t.dtype].itemsize for t in manifest.tensors)
    aliases = sum(len(g.aliases) for g in manifest.ties)
    parts = [count(len(stored), "stored tensor"), f"{count(len(manifest.ties), 'tie group')} "
             f"({count(aliases, 'alias', 'aliases')})"]
    if manifest.views:
        parts.append(count(len(manifest.views), "view"))
    if grads:
        parts.append(count(grads, "gradient"))
    parts.append(size(nbytes))
    return ", ".join(parts)


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 alias``, ``2 aliases``."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def size(n: float) -> str:
    """Bytes in decimal units: ``512 B``, ``1.5 kB``, ``124.4 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover
