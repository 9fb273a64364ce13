"""`convert` of an ONNX model keeps its computation graph (issue 14, defect 7): ONNX -> ONNX gives a model
that onnxruntime runs with the very outputs of the original (paramio's graph exports and torch.onnx.export's
own files, inline or with external data), a cast that would mistype the graph is refused, and ONNX -> another
format says on stderr that the graph is not carried."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import paramio
from paramio.cli import app
from paramio.convert import GraphNotCarried
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .test_onnx import export_with_torch, run

TOKENS = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))


def exported_lm(path: Path, **options) -> torch.nn.Module:
    model = tiny_lm().eval()
    paramio.save(model, path, example_inputs=(TOKENS,), **options)
    return model


def test_an_exported_graph_converted_to_onnx_runs_with_the_same_outputs(tmp_path):
    model = exported_lm(tmp_path / "lm.onnx")
    paramio.convert(tmp_path / "lm.onnx", tmp_path / "copy.onnx")

    before, after = onnx.load(tmp_path / "lm.onnx"), onnx.load(tmp_path / "copy.onnx")
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    assert len(after.graph.node) > 20  # the graph, not a weights container
    (expected,), (got,) = run(tmp_path / "lm.onnx", TOKENS), run(tmp_path / "copy.onnx", TOKENS)
    assert np.array_equal(got, expected)
    assert np.allclose(got, model(TOKENS).detach().numpy(), atol=1e-5)
    ck = paramio.load(tmp_path / "copy.onnx")
    assert ck["head.weight"] is ck["embed.weight"]  # the tie still stored once
    paramio.convert(tmp_path / "copy.onnx", tmp_path / "again.onnx")  # deterministic
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "copy.onnx").read_bytes()


def test_a_torch_onnx_export_converted_to_onnx_keeps_its_graph(tmp_path):
    model = tied_mlp().eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    export_with_torch(model, (x,), tmp_path / "stock.onnx", dynamo=True)
    paramio.convert(tmp_path / "stock.onnx", tmp_path / "copy.onnx")
    assert len(onnx.load(tmp_path / "copy.onnx").graph.node) == len(onnx.load(tmp_path / "stock.onnx").graph.node)
    (expected,), (got,) = run(tmp_path / "stock.onnx", x), run(tmp_path / "copy.onnx", x)
    assert np.array_equal(got, expected)


def test_a_graph_with_external_data_converts_to_a_runnable_graph(tmp_path):
    exported_lm(tmp_path / "lm.onnx", external_data=True)
    paramio.convert(tmp_path / "lm.onnx", tmp_path / "copy.onnx")
    (expected,), (got,) = run(tmp_path / "lm.onnx", TOKENS), run(tmp_path / "copy.onnx", TOKENS)
    assert np.array_equal(got, expected)


def test_a_cast_of_a_graph_is_refused_a_cast_of_a_weights_container_is_not(tmp_path):
    exported_lm(tmp_path / "lm.onnx")
    with pytest.raises(FormatError, match=r"lm.onnx: a cast to bfloat16 would leave the tensors of its "
                                          r"computation graph.*convert without a dtype"):
        paramio.convert(tmp_path / "lm.onnx", tmp_path / "half.onnx", dtype="bf16")
    assert not (tmp_path / "half.onnx").exists()
    paramio.save(tiny_lm(), tmp_path / "weights.onnx")
    paramio.convert(tmp_path / "weights.onnx", tmp_path / "half.onnx", dtype="bf16")
    assert paramio.load(tmp_path / "half.onnx")["embed.weight"].dtype == torch.bfloat16


def test_converting_a_graph_to_another_format_warns_that_the_graph_is_not_carried(tmp_path):
    exported_lm(tmp_path / "lm.onnx")
    with pytest.warns(GraphNotCarried, match=r"lm.onnx: its onnx computation graph is not carried to safetensors"):
        paramio.convert(tmp_path / "lm.onnx", tmp_path / "lm.safetensors")
    paramio.save(tiny_lm(), tmp_path / "weights.onnx")  # a weights container has no graph to lose
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphNotCarried)
        paramio.convert(tmp_path / "weights.onnx", tmp_path / "weights.safetensors")


def test_the_cli_says_on_stderr_that_the_graph_is_not_carried(tmp_path):
    exported_lm(tmp_path / "lm.onnx")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "lm.onnx"), str(tmp_path / "lm.h5")])
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "computation graph is not carried to hdf5" in warning[0]
    assert "warning" not in result.stdout


def test_a_graph_export_without_onnxscript_names_the_package_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_ir", None)  # as if it were not installed
    with pytest.raises(FormatError, match=r"needs the onnxscript package.*pip install onnxscript"):
        paramio.save(tiny_lm(), tmp_path / "lm.onnx", example_inputs=(TOKENS,))
    assert list(tmp_path.iterdir()) == []
