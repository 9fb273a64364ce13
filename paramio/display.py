"""How a manifest looks on a terminal: the ``paramio inspect`` table and its one-line summary.

Shared by the CLI and ``make demo`` (which prints the table the command would), so it lives in the library
rather than in the command. Rendering only: the figures come from :mod:`paramio.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from .dtype_names import ITEMSIZE
from .manifest import Manifest

__all__ = ["manifest_table", "ManifestTable", "shard_table", "summary", "count", "size", "figure", "shorten", "metadata_line",
           "SHOWN"]

#: Names up to this long keep their full width; longer ones (hostile files) may be folded.
_LONGEST_NAME = 160
#: inspect --stats columns: (header, TensorStats field); imported lazily, so no reader is loaded for them
_FIGURES = (("mean", "mean"), ("std", "std"), ("min", "min"), ("max", "max"), ("norm", "l2_norm"),
            ("zeros", "zero_fraction"), ("nan/inf", None))
_FIGURE_HEADERS = tuple(header for header, _ in _FIGURES)


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
                   title: str | None = None, *, checksums: bool = True, shards: Mapping[str, str] | None = None
                   ) -> ManifestTable:
    """The ``paramio inspect`` table: one row per name, aliases and views included (a rich renderable);
    ``shards`` (a sharded folder: stored name -> shard file) adds the shard column (an alias or view is in its
    base's shard)."""
    return ManifestTable(manifest, stats, title, checksums=checksums, shards=shards)


class ManifestTable:
    """The table, laid out for the width it is printed at: names never wrap (a wrapped name cannot be
    copied); when the width is short the checksum column gives way first (shortened with an ellipsis),
    then the "tied to" notes wrap between words."""

    def __init__(self, manifest: Manifest, stats: Mapping[str, Any] | None = None,
                 title: str | None = None, *, checksums: bool = True, shards: Mapping[str, str] | None = None
                 ) -> None:
        self.title, self.checksums, self.has_stats = title, checksums, stats is not None
        self.has_shards = shards is not None
        base = _bases(manifest) if shards is not None else {}
        self.rows: list[list[Any]] = []
        for name, dtype, shape, kind, note, checksum in _rows(manifest):
            label = Text(name) + (Text(f" ({kind})", style="dim") if kind != "parameter" else Text())
            cells: list[Any] = [label, dtype, str(list(shape)), f"{math.prod(shape):,}", note]
            if shards is not None:
                cells.append(shards.get(base.get(name, name), ""))
            if checksums:
                cells.append(checksum or "")
            if stats is not None:
                row = stats.get(name)
                cells += [figure(row, f) if row is not None else "" for _, f in _FIGURES]
            self.rows.append(cells)

    def columns(self) -> list[str]:
        return ["name", "dtype", "shape", "numel", "tied to"] + (["shard"] if self.has_shards else []) + (
            ["checksum"] if self.checksums else []) + (
            list(_FIGURE_HEADERS) if self.has_stats else [])

    def table(self, width: int) -> Table:
        """The rich table for ``width`` columns of text."""
        columns = self.columns()
        natural = [max([len(c)] + [len(str(row[i])) for row in self.rows]) for i, c in enumerate(columns)]
        limits: dict[str, int] = {}
        excess = sum(natural) + 3 * len(columns) + 1 - width  # each cell: a space either side, one rule
        for column, least in (("checksum", 12), ("tied to", 16)):  # what gives way, in this order
            if excess > 0 and column in columns:
                i = columns.index(column)
                cut = min(excess, max(natural[i] - least, 0))
                limits[column], excess = natural[i] - cut, excess - cut
        if excess > 0 and "checksum" in columns:  # still too narrow: no checksum rather than broken names
            drop = columns.index("checksum")
            columns, natural = columns[:drop] + columns[drop + 1:], natural[:drop] + natural[drop + 1:]
            rows = [cells[:drop] + cells[drop + 1:] for cells in self.rows]
        else:
            rows = self.rows
        table = Table(title=self.title, title_justify="left", header_style="bold")
        for i, column in enumerate(columns):
            if column == "name":
                table.add_column(column, no_wrap=True, min_width=min(natural[i], _LONGEST_NAME))
            elif column == "tied to":
                table.add_column(column, max_width=limits.get(column))
            elif column == "checksum":
                table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=limits.get(column))
            else:
                right = column == "numel" or column in _FIGURE_HEADERS
                table.add_column(column, no_wrap=True, justify="right" if right else "left")
        for cells in rows:
            style = "dim" if cells[4].startswith("alias of") else None
            table.add_row(*cells, style=style)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)


#: Characters of one metadata value (or producer field) shown; the rest is counted, not printed.
SHOWN = 200
_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {0x7F: "\\x7f", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def shorten(text: str, limit: int = SHOWN) -> str:
    """``text`` for one line of a terminal: control characters escaped, and at most ``limit`` characters
    of it (with the full length said). A 16M-character metadata value prints in microseconds, not in the
    minutes rich takes to re-wrap it."""
    shown = text[:limit].translate(_CONTROL)
    return shown if len(text) <= limit else f"{shown}… ({len(text):,} characters)"


def metadata_line(metadata: Mapping[str, str]) -> str:
    """``metadata: k=v, …`` with each key and value shortened."""
    return "metadata: " + ", ".join(f"{shorten(k, 60)}={shorten(v)}" for k, v in metadata.items())


def _bases(manifest: Manifest) -> dict[str, str]:
    """Every alias and view -> the stored tensor whose bytes it uses."""
    out = {v.name: v.base for v in manifest.views}
    for group in manifest.ties:
        for alias in group.aliases:
            out[alias] = out.get(group.canonical, group.canonical)
    return out


def shard_table(manifest: Manifest, shards: Mapping[str, str]) -> Table:
    """Per shard of a sharded folder: how many stored tensors it holds and their bytes."""
    totals: dict[str, list[int]] = {}
    for t in manifest.tensors:
        row = totals.setdefault(shards.get(t.name, "?"), [0, 0])
        row[0] += 1
        row[1] += t.numel * ITEMSIZE[t.dtype]
    table = Table(title=f"{count(len(totals), 'shard')}", title_justify="left", header_style="bold")
    for column in ("shard", "tensors", "bytes"):
        table.add_column(column, justify="left" if column == "shard" else "right")
    for shard, (tensors, nbytes) in sorted(totals.items()):
        table.add_row(shard, f"{tensors:,}", size(nbytes))
    return table


def summary(manifest: Manifest) -> str:
    """One line: stored tensors, tie groups and aliases, views, gradients, bytes."""
    stored = [t for t in manifest.tensors if t.kind != "gradient"]
    grads = len(manifest.tensors) - len(stored)
    nbytes = sum(t.numel * ITEMSIZE[t.dtype] for t in manifest.tensors)
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
