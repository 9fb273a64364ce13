"""``paramio diff A B [--tolerance T] [--values-only] [--json]``: names, dtypes, shapes, values and ties. Exit 0
equal, 1 differ. A tie group's names share one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import paramio

from ..app import EXIT_FINDING, app, examples
from ..render import json_number, stdout

__all__ = ["diff"]


def _groups(result: paramio.Diff, names: tuple[str, ...]) -> list[list[str]]:
    """``names`` with each tie group of A (compared alike) on one entry, canonical first, in order."""
    group_of = {n: g for g in result.tie_groups for n in g}
    out: list[list[str]] = []
    placed: dict[tuple[str, ...], list[str]] = {}
    for name in names:
        group = group_of.get(name)
        first = result.details.get(group[0]) if group else None
        same = first is not None and _figures(first) == _figures(result.details.get(name))
        if group and same and group in placed:
            placed[group].append(name)
            continue
        entry = [name]
        if group and same:
            placed[group] = entry
        out.append(entry)
    return out


def _figures(detail: paramio.TensorDiff | None) -> tuple | None:
    if detail is None:
        return None
    return detail.reason, detail.max_abs, detail.rel_change, detail.cosine, detail.a, detail.b


def cosine_text(cosine: float) -> str:
    """A cosine near 1 as its distance from 1 (``1 - 4.8e-07``), so that "1.000000" never hides a change."""
    if cosine == 1 or not 1 - cosine < 1e-4:
        return f"{cosine:.6g}"
    return f"1 - {1 - cosine:.2g}"


def _change_line(detail: paramio.TensorDiff | None, names: list[str]) -> str:
    label = " = ".join(names)
    if detail is None:
        return f"changed: {label}"
    if detail.reason == "values":
        return (f"values: {label} (max abs {detail.max_abs:.4g}, relative change {detail.rel_change:.3g}, "
                f"cosine {cosine_text(detail.cosine)})")
    return f"{detail.reason}: {label} ({detail.a} in A, {detail.b} in B)"


def _lines(result: paramio.Diff) -> list[str]:
    """One line per difference: names only in one file, changed tensors (a tie group on one line), then tie
    differences."""
    lines = [f"only in A: {n}" for n in result.only_in_a] + [f"only in B: {n}" for n in result.only_in_b]
    lines += [_change_line(result.details.get(g[0]), g) for g in _groups(result, result.changed)]
    lines += [f"ties: {line}" for line in result.tie_differences]
    if result.ties_changed and not result.tie_differences:
        lines.append("ties: the tie groups differ")
    return lines


def _payload(a: Path, b: Path, result: paramio.Diff) -> dict[str, Any]:
    details = {}
    for group in _groups(result, tuple(result.details)):
        d = result.details[group[0]]
        details[group[0]] = {"names": group, "reason": d.reason or None, "max_abs": json_number(d.max_abs),
                             "rel_change": json_number(d.rel_change), "cosine": json_number(d.cosine),
                             "a": d.a, "b": d.b}
    return {"a": str(a), "b": str(b), "equal": result.equal, "only_in_a": list(result.only_in_a),
            "only_in_b": list(result.only_in_b), "changed": list(result.changed),
            "ties_changed": result.ties_changed, "tie_differences": list(result.tie_differences),
            "metadata_changed": result.metadata_changed, "max_abs": json_number(result.max_abs), "details": details}


@app.command(epilog=examples(
    "paramio diff model.safetensors model.h5",
    "paramio diff model.safetensors model-bf16.safetensors --tolerance 1e-2",
))
def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="A checkpoint file.", show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="Another checkpoint file.", show_default=False)],
    tolerance: Annotated[float, typer.Option("--tolerance", "-t", min=0.0,
                                             help="Largest absolute difference still counted as equal.")] = 0.0,
    values_only: Annotated[bool, typer.Option("--values-only", help="Compare values after casting: a dtype "
                                              "change alone is no difference (a bf16 copy of an fp32 "
                                              "checkpoint, with --tolerance).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: the differences and, per tensor, "
                                        "max_abs, rel_change and cosine.")] = False,
) -> None:
    """Compare two checkpoints: names, dtypes, shapes, values and ties. Exit 0 when equal, 1 when not.

    Example: paramio diff model.safetensors model-bf16.safetensors --values-only --tolerance 1e-2
    """
    result = paramio.diff(a, b, tolerance=tolerance, values_only=values_only)
    if json_:
        sys.stdout.write(json.dumps(_payload(a, b, result), indent=2) + "\n")
        if not result.equal:
            raise typer.Exit(EXIT_FINDING)
        return
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
