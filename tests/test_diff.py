"""`paramio.diff` as a user reads it: how far a fine-tuned checkpoint moved from its base (max_abs, relative
change, cosine per tensor), whether a bf16 copy holds the same values, and differences that only an exact
comparison in the tensor's own dtype sees (int64 beyond 2**53, uint64, imaginary parts)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import paramio
from paramio.examples import tiny_lm


def test_details_say_how_far_fine_tuning_moved_each_tensor(tmp_path: Path) -> None:
    base = tiny_lm()
    paramio.save(base, tmp_path / "base.safetensors")
    tuned = tiny_lm()
    with torch.no_grad():
        tuned.embed.weight.mul_(1.01).add_(0.001)
    paramio.save(tuned, tmp_path / "tuned.h5")

    result = paramio.diff(tmp_path / "base.safetensors", tmp_path / "tuned.h5")
    assert not result.equal and set(result.changed) == {"embed.weight", "head.weight"}
    a, b = base.embed.weight.detach().double(), tuned.embed.weight.detach().double()
    detail = result.details["embed.weight"]
    assert detail.reason == "values"
    assert detail.max_abs == pytest.approx(float((a - b).abs().max()))
    assert detail.rel_change == pytest.approx(float((a - b).norm() / a.norm()))
    assert detail.cosine == pytest.approx(float(F.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0)))
    # every tensor in both has details, unchanged ones too; the alias under its own name
    assert set(result.details) == set(base.state_dict())
    assert result.details["head.weight"].name == "head.weight"
    assert result.details["head.weight"].rel_change == detail.rel_change
    unchanged = result.details["norm.weight"]
    assert (unchanged.reason, unchanged.max_abs, unchanged.rel_change, unchanged.cosine) == ("", 0.0, 0.0, 1.0)


def test_values_only_compares_a_bf16_copy_by_its_values(tmp_path: Path) -> None:
    paramio.save(tiny_lm(), tmp_path / "fp32.safetensors")
    paramio.convert(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors", dtype="bfloat16")
    strict = paramio.diff(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors")
    assert not strict.equal and strict.details["embed.weight"].reason == "dtype"
    assert 0 < strict.details["embed.weight"].max_abs < 1e-2  # the rounding is still measured
    close = paramio.diff(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors", values_only=True,
                         tolerance=1e-2)
    assert close.equal, close.changed
    exact = paramio.diff(tmp_path / "fp32.safetensors", tmp_path / "bf16.safetensors", values_only=True)
    assert "embed.weight" in exact.changed and exact.details["embed.weight"].reason == "values"


@pytest.mark.parametrize(("dtype", "a", "b"), [
    (torch.int64, [2**53 + 1, 7], [2**53 + 2, 7]),  # one float64 value for both
    (torch.int64, [-2**63, 0], [-2**63 + 1, 0]),
    (torch.uint64, [2**64 - 1, 0], [2**64 - 2, 0]),
    (torch.complex64, [1 + 1j, 2], [1 + 2j, 2]),  # only the imaginary part differs
    (torch.complex128, [complex(3, 1e-300)], [complex(3, 0)]),
])
def test_differences_float64_cannot_see_are_found(tmp_path: Path, dtype: torch.dtype, a: list, b: list) -> None:
    paramio.save({"ids": torch.tensor(a, dtype=dtype)}, tmp_path / "a.pt")
    paramio.save({"ids": torch.tensor(b, dtype=dtype)}, tmp_path / "b.pt")
    result = paramio.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert result.changed == ("ids",) and not result.equal
    assert result.details["ids"].max_abs > 0 and result.max_abs > 0
    assert paramio.diff(tmp_path / "a.pt", tmp_path / "a.pt").equal


def test_nans_in_the_same_places_are_equal_and_elsewhere_are_not() -> None:
    nan, inf = math.nan, math.inf
    a = {"w": torch.tensor([1.0, nan, inf, -inf])}
    assert paramio.diff(a, {"w": torch.tensor([1.0, nan, inf, -inf])}).equal
    moved = paramio.diff(a, {"w": torch.tensor([nan, 1.0, inf, -inf])})
    assert moved.changed == ("w",) and moved.details["w"].max_abs == inf
    flipped = paramio.diff(a, {"w": torch.tensor([1.0, nan, -inf, -inf])})
    assert flipped.changed == ("w",) and flipped.details["w"].max_abs == inf


def test_a_shape_change_and_a_lost_tie(tmp_path: Path) -> None:
    model = tiny_lm()
    untied = {k: v.clone() for k, v in model.state_dict().items()}
    result = paramio.diff(model, untied)
    assert result.ties_changed and not result.changed  # same values, but no longer one tensor
    untied["norm.bias"] = torch.zeros(3)
    result = paramio.diff(model, untied)
    assert result.details["norm.bias"].reason == "shape" and "norm.bias" in result.changed
