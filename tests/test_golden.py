"""Golden checkpoints (fixtures/golden, written by fixtures/generate.py --golden): files earlier versions of
paramio wrote must still load, validate and re-tie. Never regenerate them to make this pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import paramio
from paramio.examples import tied_mlp, tiny_lm

from .conftest import untied_lm, untied_mlp

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
FILES = sorted(p for p in GOLDEN.iterdir() if not p.name.startswith("."))


def test_every_format_has_golden_files() -> None:
    suffixes = {p.suffix for p in FILES}
    assert {".safetensors", ".h5", ".pt", ".onnx"} <= suffixes


@pytest.mark.parametrize("path", [p for p in FILES if p.stem == "tied_mlp"], ids=lambda p: p.name)
def test_golden_tied_mlp_loads_and_reties(path: Path) -> None:
    assert paramio.validate(path).ok
    ck = paramio.load(path)
    assert ck["4.weight"] is ck["2.weight"] and ck.metadata == {"fixture": "golden"}
    written = tied_mlp().state_dict()  # the seeded model fixtures/generate.py wrote the file from
    assert set(ck) == set(written)
    assert all(torch.equal(ck[name], tensor) for name, tensor in written.items())
    model = untied_mlp()
    paramio.load_into(model, path)
    assert model[2].weight is model[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), tied_mlp()(x), rtol=0, atol=0)


@pytest.mark.parametrize("path", [p for p in FILES if p.stem == "tiny_lm"], ids=lambda p: p.name)
def test_golden_tiny_lm_loads_and_reties(path: Path) -> None:
    assert paramio.validate(path).ok
    model = untied_lm()
    paramio.load_into(model, path)
    assert model.head.weight is model.embed.weight
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(model(tokens), tiny_lm()(tokens), rtol=0, atol=0)


def test_golden_files_agree_across_formats() -> None:
    for stem in ("tied_mlp", "tiny_lm"):
        group = [p for p in FILES if p.stem == stem]
        for other in group[1:]:
            assert paramio.diff(group[0], other).equal, (group[0].name, other.name)
