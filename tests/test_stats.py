"""`paramio.stats` as a user debugging a checkpoint reads it: figures that one NaN does not hide, NaN/Inf
counts, sparsity, histograms, exact float64 figures for half-precision data, integer and bool tensors, and
parameter counts where a tie counts once."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import paramio
from paramio.errors import FormatError
from paramio.examples import tiny_lm
from paramio.stats import summary_line, tensor_stats

stats_module = importlib.import_module("paramio.stats")  # the module (paramio.stats is the function)


def test_one_nan_does_not_hide_the_rest_and_is_counted(tmp_path: Path) -> None:
    weight = torch.randn(50, 20)
    weight[3, 4] = math.nan
    weight[7, 1] = math.inf
    weight[9, 9] = -math.inf
    weight[0, :5] = 0.0
    paramio.save({"w": weight, "ok": torch.ones(3)}, tmp_path / "m.safetensors")
    result = paramio.stats(tmp_path / "m.safetensors")
    s = result.tensors["w"]
    finite = weight[torch.isfinite(weight)].double()
    assert (s.nan_count, s.posinf_count, s.neginf_count, s.inf_count) == (1, 1, 1, 2)
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-12)
    assert s.std == pytest.approx(float(finite.std(correction=0)), rel=1e-12)
    assert (s.min, s.max) == (float(finite.min()), float(finite.max()))
    assert s.absmax == float(finite.abs().max())
    assert s.l2_norm == pytest.approx(float(finite.norm()), rel=1e-12)
    assert s.zero_fraction == 5 / 1000
    assert len(s.hist_edges) == 65 and sum(s.hist_counts) == s.finite_count == 997
    assert result.nonfinite == ("w",)


def test_half_precision_figures_are_exact_in_float64() -> None:
    values = torch.randn(4096).to(torch.bfloat16) * 1000 + 3
    s = tensor_stats(values)
    exact = values.double()
    assert s.dtype == "bfloat16"
    assert s.mean == pytest.approx(float(exact.mean()), rel=1e-14)
    assert s.l2_norm == pytest.approx(float(exact.norm()), rel=1e-14)
    ones = torch.ones(2**24 + 16, dtype=torch.float16)  # a float32 running sum stalls at 2**24
    assert tensor_stats(ones).l2_norm == math.sqrt(2**24 + 16)
    fp8 = torch.tensor([0.5, -2.0, 448.0], dtype=torch.float8_e4m3fn)
    assert (tensor_stats(fp8).min, tensor_stats(fp8).max) == (-2.0, 448.0)


def test_large_tensors_are_read_in_chunks_with_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "_CHUNK", 1000)  # 10 chunks, so the combination of chunks is tested
    values = torch.randn(10_000, dtype=torch.float64) * 0.01 + 1e4  # a large common offset
    values[5555] = math.nan
    s = tensor_stats(values, bins=16)
    finite = values[~torch.isnan(values)]
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-13)
    assert s.std == pytest.approx(float(finite.std(correction=0)), rel=1e-7)
    counts, edges = np.histogram(finite.numpy(), bins=16, range=(float(finite.min()), float(finite.max())))
    assert list(s.hist_counts) == counts.tolist() and np.allclose(s.hist_edges, edges)
    assert s.nan_count == 1 and sum(s.hist_counts) == 9_999


def test_integer_and_bool_tensors_get_exact_extremes_and_a_bin_per_value() -> None:
    ids = torch.tensor([2**62 + 1, 3, 2**62 + 1], dtype=torch.int64)
    s = tensor_stats(ids)
    assert (s.min, s.max, s.absmax) == (3, 2**62 + 1, 2**62 + 1) and isinstance(s.max, int)
    big = tensor_stats(torch.tensor([2**64 - 1, 0], dtype=torch.uint64))
    assert big.max == 2**64 - 1 and big.zero_fraction == 0.5
    flags = tensor_stats(torch.tensor([True, False, True, True]))
    assert flags.mean == 0.75 and (flags.min, flags.max) == (0, 1)
    assert flags.hist_edges == (-0.5, 0.5, 1.5) and flags.hist_counts == (1, 3)
    assert (flags.nan_count, flags.inf_count) == (0, 0)
    cplx = tensor_stats(torch.tensor([3 + 4j, 0j, complex(math.nan, 1)]))
    assert cplx.mean is None and cplx.absmax == 5.0 and cplx.l2_norm == 5.0 and cplx.nan_count == 1


def test_a_tie_counts_once_and_the_summary_says_how_much_is_shared(tmp_path: Path) -> None:
    model = tiny_lm()
    paramio.save(model, tmp_path / "lm.h5")
    result = paramio.stats(tmp_path / "lm.h5")
    params = {n: p for n, p in model.named_parameters()}  # named_parameters counts the tie once
    embed = model.embed.weight.numel()
    assert result.parameters_unique == sum(p.numel() for p in params.values())
    assert result.parameters_by_name == result.parameters_unique + embed
    assert result.summary() == "1.7K parameters (1.7K unique, 512 shared by 2 names)"
    assert result.tensors["head.weight"] is result.tensors["embed.weight"]  # an alias gives its canonical's
    assert result.tensors["embed.weight"].aliases == ("head.weight",)
    assert [s.name for s in result.stored][:3] == ["pos", "causal_mask", "embed.weight"]  # file order
    assert summary_line(124_439_808, 38_597_376, (2,)) == "124.4M parameters (124.4M unique, 38.6M shared by 2 names)"


def test_stats_of_models_mappings_and_views() -> None:
    base = torch.arange(6.0).reshape(2, 3)
    result = paramio.stats({"base": base, "row": base[1]})
    assert result.tensors["row"].mean == 4.0 and result.tensors["base"].mean == 2.5
    assert paramio.stats(tiny_lm()).tensors["norm.weight"].std == 0.0


def test_a_corrupt_tensor_is_an_error_not_a_figure(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    paramio.save({"w": torch.ones(64)}, path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        paramio.stats(path)
    assert paramio.stats(path, verify=False).tensors["w"].numel == 64


def test_validate_finite_names_every_tensor_with_nan_or_inf_in_one_pass(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bad = torch.zeros(10)
    bad[2] = math.nan
    bad[4] = -math.inf
    path = tmp_path / "m.pt"
    paramio.save({"good": torch.ones(4), "bad": bad, "halves": torch.full((3,), math.inf).half()}, path)
    assert paramio.validate(path).ok  # NaN/Inf are data, unless asked
    from paramio.locations.base import Source

    reads: list[str] = []
    real = Source.read_entry
    monkeypatch.setattr(Source, "read_entry", lambda self, e, *, verify: reads.append(e.name) or real(
        self, e, verify=verify))
    report = paramio.validate(path, finite=True)
    assert not report.ok
    assert report.nonfinite == {"bad": (1, 0, 1), "halves": (0, 3, 0)}
    assert report.problems == ("tensor `bad`: 1 NaN, 1 -Inf (not finite)", "tensor `halves`: 3 +Inf (not finite)")
    assert sorted(reads) == ["bad", "good", "halves"]  # each tensor read once: checksums and counts together
