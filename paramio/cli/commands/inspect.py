"""``paramio inspect FILE``: every name with its dtype, shape, ties and checksum; ``--stats`` adds figures
read from the data (:mod:`paramio.stats`), ``--json`` prints it all as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

import paramio

from ...display import manifest_table, summary
from ..app import app
from ..render import json_number, stdout

__all__ = ["inspect"]


def _head(file: Path, fmt: str, manifest: paramio.Manifest) -> str:
    producer = manifest.producer
    who = " ".join(p for p in (producer.name, producer.version) if p)
    if producer.torch:
        who += f" (torch {producer.torch})"
    head = f"{file} · {fmt} · written by {who}"
    if manifest.model_class:
        head += f" · {manifest.model_class}"
    return head


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: {file, format, manifest[, stats]}.")
                     ] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add mean/std/min/max/norm per tensor (reads the data; "
                                        "checksums are verified).")] = False,
) -> None:
    """List every name in FILE: dtype, shape, ties, checksum. Reads no tensor data without --stats."""
    from ...locations import locate
    from ...stats import read_stats

    manifest = paramio.read_manifest(file)
    numbers = read_stats(file) if stats else None
    fmt = locate(file).format
    if json_:
        payload: dict[str, Any] = {"file": str(file), "format": fmt, "manifest": json.loads(manifest.to_json())}
        if numbers is not None:
            payload["stats"] = {n: {k: json_number(v) for k, v in s.items()} for n, s in numbers.items()}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    console = stdout()
    console.print(Text(_head(file, fmt, manifest), style="bold"))
    console.print(summary(manifest))
    if manifest.metadata:
        console.print("metadata: " + ", ".join(f"{k}={v}" for k, v in manifest.metadata.items()))
    console.print(manifest_table(manifest, numbers))
