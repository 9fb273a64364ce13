"""``paramio stats FILE [--json] [--bins N]``: per-tensor statistics (:func:`paramio.stats`), NaN/Inf counts,
and unique vs by-name parameter counts; a rich table on a terminal, JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..app import app, examples
from ..render import stdout

__all__ = ["stats", "stats_table"]

_BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: tuple[int, ...], width: int = 16) -> str:
    """A histogram as ``width`` block characters (bins merged), for a table cell."""
    if not counts or not sum(counts):
        return ""
    step = max(1, -(-len(counts) // width))
    merged = [sum(counts[i:i + step]) for i in range(0, len(counts), step)]
    top = max(merged)
    return "".join(_BLOCKS[0 if c == 0 else max(1, round(8 * c / top))] for c in merged)


def stats_table(result) -> Table:
    """One row per stored tensor (a tie group's row names its aliases); non-finite rows in red."""
    from ...display import figure

    table = Table(header_style="bold", title_justify="left")
    for column in ("name", "dtype", "shape", "numel", "mean", "std", "min", "max", "absmax", "norm", "zeros",
                   "NaN", "Inf", "histogram"):
        table.add_column(column, justify="left" if column in ("name", "dtype", "shape", "histogram") else "right",
                         no_wrap=column == "name")
    for s in result.stored:
        name = Text(s.name) + (Text(f" = {', '.join(s.aliases)}", style="cyan") if s.aliases else Text())
        cells = [name, s.dtype, str(list(s.shape)), f"{s.numel:,}"]
        cells += [figure(s, f) for f in ("mean", "std", "min", "max", "absmax", "l2_norm", "zero_fraction")]
        cells += [f"{s.nan_count:,}" if s.nan_count else "", f"{s.inf_count:,}" if s.inf_count else "",
                  sparkline(s.hist_counts)]
        table.add_row(*cells, style="red" if s.nonfinite else None)
    return table


@app.command(epilog=examples(
    "paramio stats model.safetensors",
    "paramio stats model.safetensors --json --bins 32",
))
def stats(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint: a file or a folder (sharded, DCP).",
                                         show_default=False)],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: the summary, the counts and every "
                                        "tensor's figures and histogram.")] = False,
    bins: Annotated[int, typer.Option("--bins", min=1, max=4096, help="Histogram bins per tensor.")] = 64,
) -> None:
    """Per-tensor statistics of FILE: mean, std, min, max, norm, zeros, NaN/Inf counts and a histogram, over
    the finite values; parameters counted once per tie group and once per name.

    Example: paramio stats model.safetensors --json > stats.json
    """
    import paramio

    result = paramio.stats(file, bins=bins)
    if json_:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        return
    console = stdout()
    console.print(Text(f"{file}: {result.summary()}", style="bold"), soft_wrap=True)
    console.print(stats_table(result))
    if result.nonfinite:
        console.print(f"not finite: {', '.join(result.nonfinite)} (paramio validate --finite makes this a finding)",
                      soft_wrap=True)
