"""ONNX: the conformance suite, graph export that runs in onnxruntime with each tie stored once, weights
containers, external data, import of what torch and onnx produce, and hostile files."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import paramio
import paramio.formats.onnx as onnx_format
import paramio.formats.onnx.writer as onnx_writer
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .conformance import FormatConformance, partial_files, same
from .conftest import untied_mlp


class TestONNXConformance(FormatConformance):
    suffix = ".onnx"


# -- helpers -------------------------------------------------------------------------------------------------
def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused initializers (buffers the graph does not read) are only warned about
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, *inputs: torch.Tensor) -> list[np.ndarray]:
    sess = session(path)
    return sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)})


def props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def unique_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each shared tensor counted once."""
    seen = {}
    for t in model.state_dict().values():
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
    return sum(seen.values())


def node_inputs(proto: onnx.ModelProto) -> list[str]:
    return [name for node in proto.graph.node for name in node.input]


def export_with_torch(model: nn.Module, inputs: tuple, path: Path, **kwargs: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), verbose=False, **kwargs)


# -- export: the model's graph -------------------------------------------------------------------------------
def test_seed_mlp_export_runs_in_onnxruntime_and_uses_one_initializer_per_tie(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "mlp.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(3, 4),))

    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(path)
    names = [t.name for t in proto.graph.initializer]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    uses = node_inputs(proto)
    assert "4.weight" not in uses and "4.bias" not in uses  # the exporter's name for the shared layer is gone
    assert uses.count("2.weight") == 2 and uses.count("2.bias") == 2  # both uses read the canonical one
    manifest = json.loads(props(proto)["paramio.manifest"])
    assert manifest["ties"] == [{"canonical": "2.weight", "aliases": ["4.weight"]},
                                {"canonical": "2.bias", "aliases": ["4.bias"]}]

    x = torch.randn(3, 4)  # not the example
    (out,) = run(path, x)
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach())

    ck = paramio.load(path)
    assert ck["4.weight"] is ck["2.weight"] and ck["4.bias"] is ck["2.bias"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_tied_embedding_lm_export_stores_the_tie_once(tmp_path: Path) -> None:
    model = tiny_lm()
    path = tmp_path / "lm.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(2, 8, dtype=torch.long),))

    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(path)
    names = [t.name for t in proto.graph.initializer]
    assert "head.weight" not in names and names.count("embed.weight") == 1
    # no duplicate, no transposed copy of the tied embedding (pytorch #108342), no folded copy of anything
    assert sum(len(t.raw_data) for t in proto.graph.initializer) == unique_bytes(model)
    assert "head.weight" not in node_inputs(proto)
    assert json.loads(props(proto)["paramio.manifest"])["ties"] == [
        {"canonical": "embed.weight", "aliases": ["head.weight"]}
    ]

    tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(7))
    (logits,) = run(path, tokens)
    torch.testing.assert_close(torch.from_numpy(logits), model(tokens).detach())

    ck = paramio.load(path)
    assert ck["head.weight"] is ck["embed.weight"]
    assert same(ck["causal_mask"], model.causal_mask)  # stored although the graph does not read it


def test_export_with_dynamic_batch(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "mlp.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(3, 4),),
                 dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = torch.randn(11, 4)
    (out,) = run(path, x)
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach())


def test_export_keeps_gradients_and_metadata(tmp_path: Path) -> None:
    model = tied_mlp()
    model(torch.randn(3, 4)).sum().backward()
    path = tmp_path / "mlp.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(3, 4),), grads=True, metadata={"run": "7"})
    sess = session(path)
    assert sess.get_modelmeta().custom_metadata_map["run"] == "7"  # visible to stock tools too
    ck = paramio.load(path)
    assert same(ck.grads["2.weight"], model[2].weight.grad) and ck.metadata == {"run": "7"}
    x = torch.randn(3, 4)
    torch.testing.assert_close(torch.from_numpy(run(path, x)[0]), model(x).detach())


def test_export_keeps_exporter_constants_apart_from_parameters(tmp_path: Path) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)  # not in the state dict

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * self.scale

    model = Scaled()
    path = tmp_path / "scaled.onnx"
    written = paramio.save(model, path, example_inputs=(torch.zeros(2, 4),))
    proto = onnx.load(path)
    assert json.loads(props(proto)["paramio.onnx.constants"]) == ["scale"]
    assert paramio.read_manifest(path) == written
    ck = paramio.load(path)
    assert set(ck) == {"lin.weight", "lin.bias"}
    x = torch.randn(2, 4)
    torch.testing.assert_close(torch.from_numpy(run(path, x)[0]), model(x).detach())
    assert paramio.load_into(Scaled(), path).unexpected == ()


def test_export_is_the_inference_graph_and_leaves_the_model_training(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model(torch.randn(8, 4))  # running statistics move away from their initial values
    assert model.training
    path = tmp_path / "dropout.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(2, 4),))
    assert model.training and model[1].training  # modes given back
    x = torch.randn(2, 4)
    expected = model.eval()(x).detach()
    torch.testing.assert_close(torch.from_numpy(run(path, x)[0]), expected)


def test_export_renames_graph_values_that_clash_with_stored_names(tmp_path: Path) -> None:
    """The exporter names values after their op (`linear`, `add`): a top-level parameter or buffer of that
    name, stored as an initializer, must not collide with them."""

    class Clash(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Parameter(torch.randn(4, 4))
            self.tied = self.linear  # the exporter names the initializer `tied`; paramio renames it `linear`
            self.register_buffer("add", torch.ones(4))  # stored, unused by the graph

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(nn.functional.linear(x, self.tied), self.linear) + 1.0

    model = Clash()
    path = tmp_path / "clash.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(2, 4),))
    onnx.checker.check_model(str(path), full_check=True)
    assert [t.name for t in onnx.load(path).graph.initializer] == ["linear", "add"]
    x = torch.randn(2, 4)
    torch.testing.assert_close(torch.from_numpy(run(path, x)[0]), model(x).detach())


def test_export_refuses_a_dtype_cast_the_graph_would_not_match(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    with pytest.raises(FormatError, match="cast the model"):
        paramio.save(tied_mlp(), path, example_inputs=(torch.zeros(3, 4),), dtype="bf16")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_partial_alias_it_cannot_store_once(tmp_path: Path) -> None:
    class RowOfBase(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = nn.Parameter(torch.randn(4, 4))
            self.row = nn.Parameter(self.base.data[1])  # its own Parameter over a slice of base's memory

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.base + self.row

    path = tmp_path / "row.onnx"
    with pytest.raises(FormatError, match="`row` is a partial alias .* `base`"):
        paramio.save(RowOfBase(), path, example_inputs=(torch.zeros(1, 4),))
    paramio.save(RowOfBase(), path)  # a weights container stores it as a view of its base
    ck = paramio.load(path)
    assert ck["row"].untyped_storage().data_ptr() == ck["base"].untyped_storage().data_ptr()


def test_export_failure_is_a_format_error_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(FormatError, match=r"torch.onnx.export failed: RuntimeError: .*\[1, 5\]"):
        paramio.save(tied_mlp(), path, example_inputs=(torch.zeros(1, 5),))  # the model takes (batch, 4)
    assert list(tmp_path.iterdir()) == []


def test_files_are_deterministic_and_tensors_are_read_into_their_own_memory(tmp_path: Path) -> None:
    """The same input gives the same bytes; a loaded tensor is in memory of its own, as onnx gives it (not a
    view of a mapping, which another program rewriting the file in place would change or fault)."""
    tensors = {"f32": torch.randn(3), "f64": torch.randn(5, dtype=torch.float64),
               "i16": torch.ones(3, dtype=torch.int16), "f16": torch.randn(7).half(), "odd-name-ü": torch.randn(2, 2)}
    graph = {"example_inputs": (torch.zeros(3, 4),)}
    for name, obj, kwargs in (("container", tensors, {}), ("graph", tied_mlp(), graph)):
        first, second = tmp_path / f"{name}1.onnx", tmp_path / f"{name}2.onnx"
        paramio.save(obj, first, **kwargs)
        paramio.save(obj, second, **kwargs)
        assert second.read_bytes() == first.read_bytes()
        ck = paramio.load(first)
        for init in onnx.load(first).graph.initializer:  # protobuf reads the same values
            assert np.array_equal(numpy_helper.to_array(init), ck[init.name].numpy()), init.name
        for tensor in ck.values():
            assert tensor.untyped_storage().nbytes() == tensor.nbytes  # its own memory, not the file's


# -- weights containers --------------------------------------------------------------------------------------
def test_weights_container_outputs_every_stored_tensor(tmp_path: Path) -> None:
    model = tiny_lm()
    path = tmp_path / "weights.onnx"
    manifest = paramio.save(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    sess = session(path)
    assert sess.get_inputs() == []
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {}), strict=True))
    stored = [t.name for t in manifest.tensors]
    assert list(outputs) == [f"{n}:out" for n in stored]
    state = model.state_dict()
    for name in stored:
        assert np.array_equal(outputs[f"{name}:out"], state[name].numpy()), name
    assert "head.weight" not in stored


def test_container_keeps_bf16_and_float8_as_onnx_types(tmp_path: Path) -> None:
    values = torch.tensor([1.5, -2.25, 448.0, 0.0])
    tensors = {"bf16": values.to(torch.bfloat16), "e4m3": values.to(torch.float8_e4m3fn),
               "e5m2": values.to(torch.float8_e5m2)}
    path = tmp_path / "low.onnx"
    paramio.save(tensors, path)
    proto = onnx.load(path)
    assert {t.name: t.data_type for t in proto.graph.initializer} == {
        "bf16": TensorProto.BFLOAT16, "e4m3": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2}
    outputs = session(path).run_with_ort_values(None, {})  # numpy has no bfloat16/float8
    assert [o.data_type() for o in outputs] == ["tensor(bfloat16)", "tensor(float8e4m3fn)", "tensor(float8e5m2)"]
    ck = paramio.load(path)
    assert all(same(ck[k], v) for k, v in tensors.items())


def test_container_stores_complex_tensors_that_onnxruntime_cannot_output(tmp_path: Path) -> None:
    tensors = {"z": torch.randn(3, dtype=torch.complex64), "x": torch.ones(2)}
    path = tmp_path / "complex.onnx"
    paramio.save(tensors, path)
    assert [o.name for o in session(path).get_outputs()] == ["x:out"]
    assert same(paramio.load(path)["z"], tensors["z"])


# -- external data -------------------------------------------------------------------------------------------
def test_external_data_forced_on_a_small_model(tmp_path: Path) -> None:
    model = tiny_lm()
    path = tmp_path / "lm.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(2, 8, dtype=torch.long),), external_data=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == "lm.onnx" and re.fullmatch(r"lm\.onnx\.[0-9a-f]{16}\.data", names[1])
    data = names[1]

    proto = onnx.load(path, load_external_data=False)
    for t in proto.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        assert t.data_location == TensorProto.EXTERNAL and info["location"] == data, t.name
        assert int(info["offset"]) % 64 == 0
    assert (tmp_path / data).stat().st_size >= unique_bytes(model)
    onnx.checker.check_model(str(path), full_check=True)

    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(torch.from_numpy(run(path, tokens)[0]), model(tokens).detach())
    ck = paramio.load(path)
    assert ck["head.weight"] is ck["embed.weight"] and same(ck["pos"], model.pos.detach())

    # the pair moves together: locations are relative to the model
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in ("lm.onnx", data):
        (tmp_path / p).rename(moved / p)
    assert same(paramio.load(moved / "lm.onnx")["embed.weight"], model.embed.weight.detach())


@pytest.mark.parametrize("checksum", ["default", None])
def test_external_data_is_named_by_content_and_the_previous_one_removed(tmp_path: Path, checksum: str | None) -> None:
    path = tmp_path / "m.onnx"
    v1, v2 = {"w": torch.zeros(100)}, {"w": torch.ones(100)}

    def files() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir())

    paramio.save(v1, path, external_data=True, checksum=checksum)
    first = files()
    paramio.save(v1, path, external_data=True, checksum=checksum)
    assert files() == first  # same input, same name (and bytes)
    (tmp_path / "m.onnx.0123456789abcdef.data.bak").write_bytes(b"not paramio's")
    (tmp_path / "other.onnx.0123456789abcdef.data").write_bytes(b"another model's")
    paramio.save(v2, path, external_data=True, checksum=checksum)
    second = [n for n in files() if n.startswith("m.onnx.") and n.endswith(".data")]
    assert len(second) == 1 and second[0] not in first  # new content, new name; the old one is gone
    assert (tmp_path / "m.onnx.0123456789abcdef.data.bak").exists()
    assert (tmp_path / "other.onnx.0123456789abcdef.data").exists()
    assert same(paramio.load(path)["w"], v2["w"])
    paramio.save(v1, path)  # inline again: no data file left
    assert not [n for n in files() if n.startswith("m.onnx.") and n.endswith(".data")]
    assert same(paramio.load(path)["w"], v1["w"])


def test_external_data_is_chosen_automatically_over_the_protobuf_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_writer, "PROTOBUF_LIMIT", 4096)  # stands in for 2 GB
    big = {"a": torch.randn(1000), "b": torch.arange(10)}
    path = tmp_path / "big.onnx"
    paramio.save(big, path)
    assert [p.name for p in tmp_path.glob("big.onnx.*.data")]
    assert all(same(paramio.load(path)[k], v) for k, v in big.items())
    outputs = session(path).run(None, {})
    assert np.array_equal(outputs[0], big["a"].numpy())
    with pytest.raises(FormatError, match="2 GiB"):
        paramio.save(big, tmp_path / "inline.onnx", external_data=False)
    assert not (tmp_path / "inline.onnx").exists() and partial_files(tmp_path) == []


def test_failed_external_write_leaves_no_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.onnx"
    real = onnx_format.ONNXWriter.write_tensor

    def failing(self, entry, tensor):  # noqa: ANN001
        if entry.name == "mlp.0.weight":
            raise OSError(28, "No space left on device")
        real(self, entry, tensor)

    monkeypatch.setattr(onnx_format.ONNXWriter, "write_tensor", failing)
    with pytest.raises(FormatError, match="No space left"):
        paramio.save(tiny_lm(), path, external_data=True)
    assert list(tmp_path.iterdir()) == []


# -- import: what torch and onnx write -----------------------------------------------------------------------
@pytest.mark.parametrize("exporter", [{"dynamo": True}, {"dynamo": False}], ids=["dynamo", "torchscript"])
def test_torch_export_of_seed_mlp_loads_into_a_tied_model(tmp_path: Path, exporter: dict) -> None:
    model = tied_mlp()
    path = tmp_path / "stock.onnx"
    export_with_torch(model, (torch.zeros(2, 4),), path, **exporter)
    ck = paramio.load(path)
    assert len(ck.manifest.tensors) == 6 and ck.ties == ()  # one exporter keeps 2.*, the other 4.*
    target = tied_mlp(initialized=False, seed=5)
    report = paramio.load_into(target, path)
    assert set(report.filled) in ({"2.weight", "2.bias"}, {"4.weight", "4.bias"})
    assert target[2].weight is target[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(target(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("exporter", [{"dynamo": True, "optimize": False},
                                      {"dynamo": False, "do_constant_folding": False}], ids=["dynamo", "torchscript"])
def test_torch_export_of_tied_lm_fills_the_dropped_alias(tmp_path: Path, exporter: dict) -> None:
    model = tiny_lm()
    path = tmp_path / "stock.onnx"
    export_with_torch(model, (torch.zeros(2, 8, dtype=torch.long),), path, **exporter)
    target = tiny_lm(seed=9)
    report = paramio.load_into(target, path, strict=False)
    assert report.missing == ("causal_mask",)  # both exporters drop the buffer the forward pass never reads
    assert report.unexpected == ()
    assert target.head.weight is target.embed.weight
    tokens = torch.randint(0, 32, (3, 8))
    torch.testing.assert_close(target(tokens), model(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("exporter", [{"dynamo": True}, {"dynamo": False}], ids=["dynamo", "torchscript"])
def test_exporter_constants_are_named_as_constants(tmp_path: Path, exporter: dict) -> None:
    """The default exports fold weights into new initializers (transposed copies, a slice of ``pos``):
    those import as kind ``constant``, which load_into does not call unexpected."""
    model = tiny_lm()
    path = tmp_path / "stock.onnx"
    export_with_torch(model, (torch.zeros(2, 8, dtype=torch.long),), path, **exporter)
    ck = paramio.load(path)
    constants = {t.name for t in ck.manifest.tensors if t.kind == "constant"}
    parameters = {t.name for t in ck.manifest.tensors if t.kind != "constant"}
    assert len(constants) == 4 and parameters <= set(model.state_dict())
    report = paramio.load_into(tiny_lm(seed=3), path, strict=False)
    assert report.unexpected == ()


class Buffers(nn.Module):
    """A parameter, a persistent and a non-persistent buffer, and a plain tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("shift", torch.full((4,), 1.0))
        self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)
        self.offset = torch.arange(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale + self.shift + self.offset


def test_dynamo_export_notes_tell_parameters_buffers_and_constants_apart(tmp_path: Path) -> None:
    path = tmp_path / "buffers.onnx"
    export_with_torch(Buffers().eval(), (torch.zeros(2, 4),), path)
    kinds = {t.name: t.kind for t in paramio.read_manifest(path).tensors}
    assert kinds == {"lin.weight": "parameter", "lin.bias": "parameter", "shift": "buffer",
                     "scale": "constant", "offset": "constant"}
    report = paramio.load_into(Buffers(), path)  # strict: the constants are not the model's state
    assert set(report.loaded) == {"lin.weight", "lin.bias", "shift"}


def test_renamed_dynamo_initializers_get_their_state_dict_names_back(tmp_path: Path) -> None:
    """The exporter's signature maps its node names (``p_lin_weight``) to state-dict names; an initializer
    that carries the node name is imported under the state-dict name."""
    model = Buffers().eval()
    path = tmp_path / "renamed.onnx"
    export_with_torch(model, (torch.zeros(2, 4),), path)
    proto = onnx.load(path)
    renames = {"lin.weight": "p_lin_weight", "shift": "b_shift"}
    for value in [*proto.graph.initializer, *proto.graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
    onnx.save(proto, path)
    ck = paramio.load(path)
    assert {"lin.weight", "shift"} <= set(ck) and not {"p_lin_weight", "b_shift"} & set(ck)
    assert same(ck["lin.weight"], model.lin.weight.detach())
    fresh = Buffers()
    paramio.load_into(fresh, path)
    x = torch.randn(2, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def _backend_models() -> list[Path]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    return sorted(root.rglob("*.onnx"))


def test_models_shipped_with_onnx_import() -> None:
    models = _backend_models()
    assert len(models) > 50
    compared = 0
    for path in models:
        ck = paramio.load(path)
        for init in onnx.load(path).graph.initializer:
            expected = numpy_helper.to_array(init)
            got = ck[init.name].numpy()
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (path.name, init.name)
            compared += 1
    assert compared > 1000


TYPED = [
    (TensorProto.FLOAT, torch.float32), (TensorProto.DOUBLE, torch.float64), (TensorProto.FLOAT16, torch.float16),
    (TensorProto.BFLOAT16, torch.bfloat16), (TensorProto.INT64, torch.int64), (TensorProto.INT32, torch.int32),
    (TensorProto.INT16, torch.int16), (TensorProto.INT8, torch.int8), (TensorProto.UINT8, torch.uint8),
    (TensorProto.UINT16, torch.uint16), (TensorProto.UINT32, torch.uint32), (TensorProto.UINT64, torch.uint64),
    (TensorProto.BOOL, torch.bool),
]


def _model_file(path: Path, initializers: list[TensorProto], **metadata: str) -> Path:
    graph = helper.make_graph([], "g", [], [], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    helper.set_model_props(model, metadata)
    path.write_bytes(model.SerializeToString())
    return path


def test_typed_fields_import(tmp_path: Path) -> None:
    """Older exporters store values in float_data, int32_data, int64_data ... instead of raw_data."""
    values = [1.0, 0.0, 3.0, 1.0, 2.0, 1.0]
    inits = [helper.make_tensor(f"t{code}", code, [2, 3], values) for code, _ in TYPED]
    inits.append(helper.make_tensor("z", TensorProto.COMPLEX64, [2], [1 + 2j, -3j]))
    path = _model_file(tmp_path / "typed.onnx", inits)
    assert not any(t.HasField("raw_data") for t in onnx.load(path).graph.initializer)
    ck = paramio.load(path)
    for code, dtype in TYPED:
        assert same(ck[f"t{code}"], torch.tensor(values).reshape(2, 3).to(dtype)), dtype
    assert same(ck["z"], torch.tensor([1 + 2j, -3j], dtype=torch.complex64))


def _external(location: str, offset: int = 0, length: int = 24, *, name: str = "w") -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2, 3], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


def test_shared_external_range_imports_as_a_tie(tmp_path: Path) -> None:
    """Two initializers on one external byte range are ONNX's way to say "the same tensor"."""
    data = torch.arange(6, dtype=torch.float32)
    (tmp_path / "w.bin").write_bytes(data.numpy().tobytes())
    inits = [_external("w.bin", name="embed"), _external("w.bin", name="head")]
    path = _model_file(tmp_path / "shared.onnx", inits, note="hi")
    ck = paramio.load(path)
    assert ck["head"] is ck["embed"] and same(ck["embed"], data.reshape(2, 3))
    assert [(g.canonical, g.aliases) for g in ck.ties] == [("embed", ("head",))]
    assert ck.metadata == {"note": "hi"}


def test_initializers_of_unsupported_types_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    inits = [helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"b"]),
             helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])]
    ck = paramio.load(_model_file(tmp_path / "strings.onnx", inits))
    assert set(ck) == {"w"}
    assert json.loads(ck.metadata["paramio.skipped"]) == ["words"]


# -- hostile files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("location, message", [
    ("/etc/passwd", "not a relative path"),
    ("../outside.bin", "not a relative path"),
    ("sub/../../outside.bin", "not a relative path"),
    ("link.bin", "leads out of the model's folder"),
    ("nowhere.bin", "missing"),
])
def test_external_locations_outside_the_folder_are_refused(tmp_path: Path, location: str, message: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 24)
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    path = _model_file(folder / "m.onnx", [_external(location)])
    with pytest.raises(FormatError, match=message):
        paramio.read_manifest(path)


@pytest.mark.parametrize("offset, length, message", [
    (8, 24, "does not hold"),  # runs past the end of the 24-byte file
    (0, 20, "does not hold"),  # shorter than the tensor
    (1 << 62, 24, "does not hold"),
])
def test_external_ranges_are_bounds_checked_before_reading(tmp_path: Path, offset: int, length: int,
                                                           message: str) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 24)
    path = _model_file(tmp_path / "m.onnx", [_external("w.bin", offset, length)])
    with pytest.raises(FormatError, match=message):
        paramio.read_manifest(path)


def _hostile(kind: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "empty-model":  # parses as an empty ModelProto
        return onnx.ModelProto(ir_version=10).SerializeToString()
    if kind == "random":
        return np.random.default_rng(0).bytes(4096)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40], raw_data=b"\0" * 8)
    if kind == "raw-size-mismatch":
        return helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])).SerializeToString()
    if kind == "negative-dim":
        t.ClearField("dims")
        t.dims.extend([-2])
        return helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])).SerializeToString()
    if kind == "duplicate-names":
        ok = numpy_helper.from_array(np.ones(2, np.float32), "w")
        return helper.make_model(helper.make_graph([], "g", [], [], initializer=[ok, ok])).SerializeToString()
    if kind == "length-past-end":
        return b"\x08\x0a\x3a\xff\xff\xff\x0f" + b"\0" * 16
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file"),
    ("empty-model", "no graph"),
    ("random", "not a valid ONNX model"),
    ("raw-size-mismatch", "needs 4398046511104 bytes"),
    ("negative-dim", "non-negative"),
    ("duplicate-names", "two initializers are named `w`"),
    ("length-past-end", "truncated"),
])
def test_hostile_files_are_format_errors(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(_hostile(kind))
    with pytest.raises(FormatError, match=message) as info:
        paramio.load(path)
    assert "bad.onnx" in str(info.value) and "\n" not in str(info.value)


def test_every_truncation_of_a_graph_file_is_a_format_error(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    paramio.save(tied_mlp(), good, example_inputs=(torch.zeros(1, 4),))
    data = good.read_bytes()
    bad = tmp_path / "cut.onnx"
    for cut in range(0, len(data), max(1, len(data) // 97)):
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            paramio.load(bad)
    os.remove(bad)


def test_a_reader_keeps_the_external_data_it_opened_when_a_save_replaces_and_removes_it(tmp_path: Path) -> None:
    from paramio.locations import open_source

    path = tmp_path / "m.onnx"
    old, new = {"w": torch.zeros(1 << 19), "b": torch.zeros(7)}, {"w": torch.ones(1 << 19), "b": torch.ones(7)}
    paramio.save(old, path, external_data=True)
    with open_source(path) as source:
        manifest = source.manifest()
        paramio.save(new, path, external_data=True)  # a new data file; the old one is removed
        assert len(list(tmp_path.glob("m.onnx.*.data"))) == 1
        read = {e.name: source.read_entry(e, verify=True) for e in manifest.tensors}
    assert all(same(read[k], v) for k, v in old.items())
    assert all(same(paramio.load(path)[k], v) for k, v in new.items())
