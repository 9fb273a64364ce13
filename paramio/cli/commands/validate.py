"""``paramio validate FILE [--against SPEC|signature.json] [--finite] [--json]``: integrity, structure, the tie
audit and, with --against, the names, shapes and ties a model or signature expects; with --finite, every
tensor holding NaN/Inf. Exit 1 on problems; the audit's notes alone do not fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import paramio

from ...display import summary
from ..app import EXIT_FINDING, app, examples
from ..factory import about_model, model_or_path
from ..options import ExampleInputs
from ..render import audit_json, print_findings, stdout

__all__ = ["validate"]


def _payload(file: Path, report: paramio.Report) -> dict[str, Any]:
    return {"file": str(file), "ok": report.ok, "problems": list(report.problems), "notes": list(report.notes),
            "audit": audit_json(report.audit) if report.audit is not None else None,
            "nonfinite": {n: {"nan": c[0], "posinf": c[1], "neginf": c[2]} for n, c in report.nonfinite.items()}}


@app.command(epilog=examples(
    "paramio validate model.safetensors",
    "paramio validate model.safetensors --against mymodels:build",
))
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)],
    against: Annotated[str | None, typer.Option("--against", "-a", metavar="SPEC|signature.json",
                                                help="What FILE must hold: a factory (package.module:callable), "
                                                "a signature JSON, or another checkpoint.")] = None,
    example_input: ExampleInputs = None,
    finite: Annotated[bool, typer.Option("--finite", help="Also a finding: any tensor holding NaN or Inf (counted "
                                         "in the same pass as the checksums).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: {file, ok, problems, notes, audit, "
                                        "nonfinite}.")] = False,
) -> None:
    """Check FILE whole (manifest, structure, checksums, tie audit); with --against, names, shapes, ties.

    Example: paramio validate model.safetensors --against mymodels:build --finite
    """
    expected = model_or_path(against, example_input) if against is not None else None
    with about_model(against):
        report = paramio.validate(file, against=expected, finite=finite)
    if json_:
        sys.stdout.write(json.dumps(_payload(file, report), indent=2) + "\n")
        if not report.ok:
            raise typer.Exit(EXIT_FINDING)
        return
    console = stdout()
    if report.ok:
        what = summary(report.manifest) if report.manifest is not None else ""
        console.print(f"{file}: ok: {what}" + (f"; matches {against}" if against else "")
                      + ("; every value finite" if finite else ""), soft_wrap=True)
        print_findings(console, report.notes, "note")
        return
    count = len(report.problems)
    console.print(f"{file}: {count} problem{'s' if count != 1 else ''}", soft_wrap=True)
    for problem in report.problems:
        console.print(f"  - {problem}", soft_wrap=True)
    print_findings(console, report.notes, "note")
    raise typer.Exit(EXIT_FINDING)
