"""``paramio schema [--check]``: write the manifest and signature JSON Schemas generated from the pydantic
models; ``--check`` writes nothing and exits 1 naming stale or missing files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import EXIT_FINDING, app
from ..render import status, stdout, write_text

__all__ = ["schema", "SCHEMA_DIR"]

#: The checked-in schemas/ folder next to the package (in a source checkout).
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"


@app.command()
def schema(
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 naming stale or missing files.")
                     ] = False,
    folder: Annotated[Path, typer.Option("--dir", help="Where the schema files live.", file_okay=False)
                      ] = SCHEMA_DIR,
) -> None:
    """Write the manifest and signature JSON Schemas (generated from the models) to schemas/."""
    from ...manifest import json_schemas

    stale = []
    for filename, text in json_schemas().items():
        path = folder / filename
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
            status(f"wrote {path}")
    if check and stale:
        console = stdout()
        for path in stale:
            state = "stale" if path.exists() else "missing"
            console.print(f"{path}: {state}; run `paramio schema` to regenerate", soft_wrap=True)
        raise typer.Exit(EXIT_FINDING)
    if not stale:
        status(f"{folder}: schemas up to date")
