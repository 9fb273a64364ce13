"""Regenerate docs/report.png, the report figure the README shows: ``python scripts/docs_report.py``.

The built-in tiny language model (its head tied to its embedding), saved and plotted by ``paramio report``;
the PNG is reduced to a 64-colour palette so that the checked-in file stays small. Same bytes every run.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

import paramio
from paramio.examples import tiny_lm

OUT = Path(__file__).resolve().parent.parent / "docs" / "report.png"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the figure's title names the checkpoint: a relative name, the same every run
        path = Path("tiny_lm.safetensors")
        paramio.save(tiny_lm(), path)
        figure = paramio.report(path, path="report.png")
        image = Image.open(figure).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_bytes(buffer.getvalue())
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
