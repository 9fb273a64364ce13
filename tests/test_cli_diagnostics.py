"""The diagnostics at the shell: `paramio stats`, `inspect --stats` with the tie audit, `validate --finite`
and its notes, `diff --json / --values-only` with a tie group on one line, and `paramio report`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

import paramio
from paramio.examples import tiny_lm

from .test_cli import one_line_error, run


@pytest.fixture
def lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    paramio.save(tiny_lm(), tmp_path / "lm.safetensors")
    return tmp_path / "lm.safetensors"


def test_stats_prints_the_counts_and_a_row_per_tensor(lm: Path) -> None:
    out = run("stats", lm).stdout
    assert "1.7K parameters (1.7K unique, 512 shared by 2 names)" in out
    assert "embed.weight = head.weight" in out and out.count("head.weight") == 1  # a tie group is one row
    payload = json.loads(run("stats", lm, "--json", "--bins", "8").stdout)
    assert payload["parameters_by_name"] == payload["parameters_unique"] + 512
    embed = next(t for t in payload["tensors"] if t["name"] == "embed.weight")
    assert len(embed["hist_edges"]) == 9 and sum(embed["hist_counts"]) == 512 and embed["aliases"] == ["head.weight"]
    run("stats", lm, "--bins", "0", code=2)


def test_a_nan_is_a_finding_only_with_finite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    weights = tiny_lm().state_dict()
    weights["mlp.0.weight"][0, :3] = math.nan
    weights["norm.bias"][1] = -math.inf
    paramio.save(weights, "nan.safetensors")
    assert "ok" in run("validate", "nan.safetensors").stdout
    out = run("validate", "nan.safetensors", "--finite", code=1).stdout
    assert "tensor `mlp.0.weight`: 3 NaN (not finite)" in out and "tensor `norm.bias`: 1 -Inf (not finite)" in out
    payload = json.loads(run("validate", "nan.safetensors", "--finite", "--json", code=1).stdout)
    assert payload["nonfinite"] == {"mlp.0.weight": {"nan": 3, "posinf": 0, "neginf": 0},
                                    "norm.bias": {"nan": 0, "posinf": 0, "neginf": 1}}
    stats_out = run("stats", "nan.safetensors").stdout
    assert "not finite: norm.bias, mlp.0.weight" in stats_out  # file order


def test_the_tie_audit_in_validate_and_inspect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = tiny_lm().state_dict()
    state["head.weight"] = state["head.weight"].clone()
    st.save_file(state, "copied.safetensors")
    out = run("validate", "copied.safetensors").stdout  # a note, not a finding
    assert "ok" in out and "note: suspected lost tie: `embed.weight`, `head.weight`" in out
    assert "suspected lost tie" in run("inspect", "--stats", "copied.safetensors").stdout
    assert "suspected" not in run("inspect", "copied.safetensors").stdout  # no data read, no guess
    payload = json.loads(run("validate", "copied.safetensors", "--json").stdout)
    assert payload["ok"] and payload["audit"]["suspected_ties"] == [["embed.weight", "head.weight"]]
    out = run("validate", "copied.safetensors", "--against", "paramio.examples:tiny_lm").stdout
    assert "equal copies" in out


def test_diff_json_values_only_and_a_tie_group_on_one_line(lm: Path) -> None:
    tuned = tiny_lm()
    with torch.no_grad():
        tuned.embed.weight.add_(0.001)
    paramio.save(tuned, "tuned.safetensors")
    out = run("diff", lm, "tuned.safetensors", code=1).stdout
    assert "values: embed.weight = head.weight (max abs 0.001" in out and "cosine 1 - 4.8e-07" in out
    assert out.count("head.weight") == 1
    payload = json.loads(run("diff", lm, "tuned.safetensors", "--json", code=1).stdout)
    assert payload["details"]["embed.weight"]["names"] == ["embed.weight", "head.weight"]
    assert payload["details"]["embed.weight"]["max_abs"] == pytest.approx(0.001, rel=1e-3)
    assert payload["details"]["norm.weight"] == {"names": ["norm.weight"], "reason": None, "max_abs": 0.0,
                                                 "rel_change": 0.0, "cosine": 1.0, "a": "float32[16]",
                                                 "b": "float32[16]"}
    run("convert", lm, "bf16.safetensors", "--dtype", "bf16")
    run("diff", lm, "bf16.safetensors", code=1)
    run("diff", lm, "bf16.safetensors", "--values-only", "--tolerance", "0.01")


def test_report_writes_the_page_and_figures(lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    paramio.save(tiny_lm(seed=1), "other.safetensors")
    result = run("report", lm, "other.safetensors", "-o", "r.html")
    assert "wrote r.html" in result.stderr and Path("r.html").read_text().count("<section") == 5
    run("report", lm, "-o", "r.png", "--tensors", "mlp.*")
    assert Path("r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(run("report", lm, "-o", "r.png", "--tensors", "nope*", code=2), "nope*")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(run("report", lm, "-o", "x.png", code=2), "pip install 'paramio[report]'")
