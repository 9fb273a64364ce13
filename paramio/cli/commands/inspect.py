"""``paramio inspect FILE``: every name with its dtype, shape, ties and checksum; ``--stats`` adds figures
read from the data (:mod:`paramio.stats`), ``--json`` prints it all as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import paramio

from ...display import manifest_table, metadata_line, shard_table, shorten, summary
from ..app import app, examples
from ..render import audit_json, print_findings, stdout

__all__ = ["inspect"]


def _head(file: Path, fmt: str, manifest: paramio.Manifest) -> str:
    producer = manifest.producer
    who = " ".join(p for p in (producer.name, producer.version) if p)
    if producer.torch:
        who += f" (torch {producer.torch})"
    head = f"{file} · {fmt} · written by {shorten(who)}"
    if manifest.model_class:
        head += f" · {shorten(manifest.model_class)}"
    return head


def _shards(location: object, manifest: paramio.Manifest) -> dict[str, str]:
    """A sharded folder: the shard file of each stored tensor."""
    from ...locations import open_source

    with open_source(location) as source:
        return {t.name: source.file_of(t.name) for t in manifest.tensors}


@app.command(epilog=examples(
    "paramio inspect model.safetensors",
    "paramio inspect model.safetensors --stats --json",
))
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False,
                                         help="A checkpoint: a file, a sharded folder (or its index file) or a DCP "
                                         "folder.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: {file, format, manifest[, stats]}.")
                     ] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add mean/std/min/max/norm, zeros and NaN/Inf counts per "
                                        "tensor, and the tie audit (reads the data; checksums are verified).")
                     ] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="With --stats: check each tensor's checksum "
                                         "(default); --no-verify reads a damaged tensor anyway.")] = True,
) -> None:
    """List every name in FILE: dtype, shape, ties, checksum. Reads no tensor data without --stats."""
    from ...audit import audit_stored
    from ...locations import locate
    from ...stats import stats_of
    from ...stored import open_stored

    manifest = paramio.read_manifest(file)
    numbers = found = None
    if stats:
        with open_stored(file, verify=verify) as stored:
            numbers = stats_of(stored)
            found = audit_stored(stored)
    location = locate(file)
    fmt = location.format
    chunks = _chunks(location.root) if location.kind == "dcp" else None
    shards = _shards(location, manifest) if location.kind == "sharded" else None
    if json_:
        payload: dict[str, Any] = {"file": str(file), "format": fmt, "manifest": json.loads(manifest.to_json())}
        if chunks is not None:
            payload["chunks"] = chunks
        if shards is not None:
            payload["shards"] = shards
        if numbers is not None and found is not None:
            payload["stats"] = {s.name: s.to_json() for s in numbers.stored}
            payload["summary"] = numbers.summary()
            payload["audit"] = audit_json(found)
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    console = stdout()
    console.print(Text(_head(file, fmt, manifest), style="bold"), soft_wrap=True)
    console.print(summary(manifest), soft_wrap=True)
    if manifest.metadata:
        console.print(metadata_line(manifest.metadata), soft_wrap=True)
    console.print(manifest_table(manifest, None if numbers is None else {s.name: s for s in numbers.stored},
                                 shards=shards))
    if shards is not None:
        console.print(shard_table(manifest, shards))
    if numbers is not None and found is not None:
        console.print(numbers.summary(), soft_wrap=True)
        print_findings(console, found.notes, "note")
    if chunks is not None:
        console.print(_chunk_table(chunks))


def _chunks(folder: Path) -> list[dict[str, Any]]:
    from ...locations.dcp import chunk_rows

    return chunk_rows(folder)


def _chunk_table(rows: list[dict[str, Any]]) -> Table:
    """A DCP folder's tensors as the ranks stored them: how many chunks, which ranks, where."""
    table = Table(title="chunks (torch.distributed.checkpoint)", title_justify="left", header_style="bold")
    for column in ("name", "chunks", "ranks", "offsets → sizes @ file"):
        table.add_column(column, justify="right" if column == "chunks" else "left", overflow="fold")
    for row in rows:
        pieces = "; ".join(f"{c['offsets']} → {c['sizes']} @ {c['file']}" for c in row["chunks"])
        table.add_row(row["name"], str(len(row["chunks"])), ", ".join(map(str, row["ranks"])), pieces)
    return table
