"""A loaded checkpoint and its file rewritten in place by another program (truncated, as `open(p, "wb")`
does before writing it again; paramio's own saves replace files by rename instead, which no reader notices).

HDF5, ONNX and `.pt` loads hold tensors in memory of their own, as h5py, onnx and `torch.load` do: the
checkpoint keeps its values and nothing faults. safetensors maps its file, as stock
`safetensors.torch.load_file` does: there an in-place rewrite kills the process with SIGBUS on the next
access, for paramio and stock safetensors alike (README "Reliability"). Each case runs in a subprocess so that
a SIGBUS is seen as the signal it is.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import sys, torch, paramio
    path, reader = sys.argv[1], sys.argv[2]
    values = torch.arange(1 << 20, dtype=torch.float32)
    paramio.save({"w": values, "v": values[:10] + 1}, path)
    if reader == "stock-safetensors":
        from safetensors.torch import load_file
        ck = load_file(path)
    else:
        ck = paramio.load(path)
    with open(path, "wb"):  # in place: the same inode, truncated (a writer about to write it again)
        pass
    assert torch.equal(ck["w"], values), "values changed"
    assert torch.equal(ck["v"], values[:10] + 1)
    print("kept")
""")


def run(tmp_path: Path, suffix: str, reader: str = "paramio") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"m{suffix}"), reader],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("suffix", [".h5", ".onnx", ".pt"])
def test_a_checkpoint_keeps_its_values_when_its_file_is_rewritten_in_place(tmp_path: Path, suffix: str) -> None:
    result = run(tmp_path, suffix)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "kept"


@pytest.mark.parametrize("reader", ["paramio", "stock-safetensors"])
def test_safetensors_maps_its_file_like_stock_safetensors(tmp_path: Path, reader: str) -> None:
    result = run(tmp_path, ".safetensors", reader)
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr[-2000:])


def test_a_file_truncated_while_it_is_read_is_a_format_error(tmp_path: Path) -> None:
    import torch

    import paramio
    from paramio.errors import FormatError
    from paramio.locations import open_source

    path = tmp_path / "m.h5"
    paramio.save({"w": torch.arange(1 << 20, dtype=torch.float32)}, path)
    with open_source(path) as source:
        entry = source.manifest().tensors[0]
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        with pytest.raises(FormatError, match=r"m\.h5.*(truncated|ends at byte)"):
            source.read_entry(entry, verify=False)
