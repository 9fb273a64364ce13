"""``paramio diff A B [--tolerance T]``: names, dtypes, shapes, values and ties. Exit 0 equal, 1 differ."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import paramio

from ..app import EXIT_FINDING, app
from ..render import stdout

__all__ = ["diff"]


def _change_line(detail: Any, name: str) -> str:
    if detail is None:
        return f"changed: {name}"
    if detail.reason == "values":
        return f"values: {name} (max abs {detail.max_abs:.4g}, relative L2 {detail.rel_l2:.3g})"
    a, b = (s.removeprefix("torch.") for s in (detail.a, detail.b))
    return f"{detail.reason}: {name} ({a} in A, {b} in B)"


def _lines(result: paramio.Diff) -> list[str]:
    """One line per difference: names only in one file, changed tensors, then tie differences."""
    lines = [f"only in A: {n}" for n in result.only_in_a] + [f"only in B: {n}" for n in result.only_in_b]
    lines += [_change_line(result.details.get(n), n) for n in result.changed]
    lines += [f"ties: {line}" for line in result.tie_differences]
    if result.ties_changed and not result.tie_differences:
        lines.append("ties: the tie groups differ")
    return lines


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="A checkpoint file.", show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="Another checkpoint file.", show_default=False)],
    tolerance: Annotated[float, typer.Option("--tolerance", "-t", min=0.0,
                                             help="Largest absolute difference still counted as equal.")] = 0.0,
) -> None:
    """Compare two checkpoints: names, dtypes, shapes, values and ties. Exit 0 when equal, 1 when not."""
    result = paramio.diff(a, b, tolerance=tolerance)
    console = stdout()
    if result.equal:
        within = f" within {tolerance:g}" if tolerance else ""
        console.print(f"{a} and {b} are equal{within} (max abs difference {result.max_abs:.4g})", soft_wrap=True)
        return
    console.print(f"{a} and {b} differ:", soft_wrap=True)
    for line in _lines(result):
        console.print(f"  {line}", soft_wrap=True)
    if result.metadata_changed:
        console.print("  (the user metadata differs too; that alone does not make the files differ)")
    console.print(f"  max abs difference {result.max_abs:.4g}")
    raise typer.Exit(EXIT_FINDING)
