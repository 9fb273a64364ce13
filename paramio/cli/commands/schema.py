"""``paramio schema [--check]``: write the manifest and signature JSON Schemas generated from the pydantic
models; ``--check`` writes nothing and exits 1 naming stale or missing files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import EXIT_FINDING, app, examples
from ..render import status, stdout, write_text

__all__ = ["schema", "SCHEMA_DIR"]

def _schema_dir() -> Path:
    """The checked-in schemas/ folder in a source checkout (an editable install); else the copies an
    installed package ships (``paramio/_schemas``, package data built from that folder)."""
    package = Path(__file__).resolve().parents[2]
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "schemas").is_dir():
        return checkout / "schemas"
    return package / "_schemas"


#: Where ``paramio schema`` writes and ``--check`` looks by default.
SCHEMA_DIR = _schema_dir()


@app.command(epilog=examples("paramio schema --check", "paramio schema"))
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
