"""Cross-software proof: what paramio writes opens in the stock tools (transformers, safetensors, h5py,
onnx/onnxruntime, torch.load), and what the stock tools write comes back into paramio with its ties."""

from __future__ import annotations

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it: nothing is downloaded

from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors.torch as st
import torch
from onnx import helper, numpy_helper

import paramio
from paramio.examples import tied_mlp, tiny_lm

from .conformance import same
from .conftest import untied_lm, untied_mlp


# -- transformers ------------------------------------------------------------------------------------------
def test_transformers_gpt2_loads_paramio_safetensors_with_its_tie(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    folder = tmp_path / "tiny-gpt2"
    config.save_pretrained(folder)  # config.json; the weights are paramio's
    manifest = paramio.save(model, folder / "model.safetensors")
    assert [(g.canonical, g.aliases) for g in manifest.ties] == [("transformer.wte.weight", ("lm_head.weight",))]

    loaded = GPT2LMHeadModel.from_pretrained(folder).eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


# -- safetensors -------------------------------------------------------------------------------------------
def test_safetensors_stock_readers_open_paramio_files(tmp_path: Path) -> None:
    path = tmp_path / "lm.safetensors"
    model = tiny_lm()
    paramio.save(model, path)
    stock = st.load_file(path)
    assert set(stock) == set(model.state_dict()) - {"head.weight"}  # the alias is stored once
    assert all(same(stock[k], v) for k, v in model.state_dict().items() if k in stock)
    twin = tiny_lm(seed=5)
    missing, unexpected = st.load_model(twin, path)
    assert not missing and not unexpected
    assert twin.head.weight is twin.embed.weight and same(twin.embed.weight.detach(), model.embed.weight.detach())


def test_safetensors_stock_files_import(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "stock.safetensors"
    st.save_model(model, path)
    ck = paramio.load(path)
    assert ck["2.weight"] is ck["4.weight"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


# -- HDF5 --------------------------------------------------------------------------------------------------
def test_h5py_opens_paramio_files_with_every_name(tmp_path: Path) -> None:
    path = tmp_path / "mlp.h5"
    model = tied_mlp()
    paramio.save(model, path)
    with h5py.File(path, "r") as f:
        tensors = f["tensors"]
        assert set(tensors) == set(model.state_dict())  # aliases are there, as hard links
        assert tensors["4.weight"] == tensors["2.weight"]
        for name, value in model.state_dict().items():
            assert np.array_equal(tensors[name][()], value.numpy()), name


def test_h5py_written_files_import_with_hard_links_as_ties(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "stock.h5"
    with h5py.File(path, "w") as f:
        for name, value in model.state_dict().items():
            if name.startswith("4."):
                f[name] = f[name.replace("4.", "2.", 1)]  # a hard link: one dataset, two names
            else:
                f[name] = value.numpy()
    ck = paramio.load(path)
    assert ck["4.weight"] is ck["2.weight"] and ck["4.bias"] is ck["2.bias"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


# -- ONNX --------------------------------------------------------------------------------------------------
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_and_onnxruntime_open_paramio_files(tmp_path: Path) -> None:
    model = tiny_lm()
    path = tmp_path / "lm.onnx"
    paramio.save(model, path, example_inputs=(torch.zeros(1, 8, dtype=torch.long),))
    onnx.checker.check_model(str(path), full_check=True)
    stock = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    state = model.state_dict()
    assert set(stock) == set(state) - {"head.weight"}
    assert all(np.array_equal(v, state[k].numpy()) for k, v in stock.items())
    tokens = torch.randint(0, 32, (1, 8))
    (logits,) = _session(path).run(None, {"tokens": tokens.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), model(tokens).detach())

    weights = tmp_path / "weights.onnx"  # a weights container, with external data as onnx itself reads it
    paramio.save(model, weights, external_data=True)
    stock = {t.name: numpy_helper.to_array(t) for t in onnx.load(weights).graph.initializer}
    assert all(np.array_equal(v, state[k].numpy()) for k, v in stock.items())
    session = _session(weights)
    outputs = {o.name: v for o, v in zip(session.get_outputs(), session.run(None, {}), strict=True)}
    assert np.array_equal(outputs["embed.weight:out"], state["embed.weight"].numpy())


def test_onnx_written_files_import(tmp_path: Path) -> None:
    """The stock path (numpy_helper + make_model + save_model), inline and with onnx's own external data."""
    arrays = {"w": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32),
              "b": np.arange(32, dtype=np.int64), "h": np.ones((3, 3), np.float16)}
    graph = helper.make_graph([], "g", [], [], initializer=[numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph)
    for name, external in (("inline.onnx", False), ("external.onnx", True)):
        path = tmp_path / name
        onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=f"{name}.data", size_threshold=0)
        ck = paramio.load(path)
        assert all(np.array_equal(ck[k].numpy(), v) for k, v in arrays.items()), name


def test_torch_onnx_export_imports_into_the_model(tmp_path: Path) -> None:
    model = tied_mlp().eval()
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
        torch.onnx.export(model, (torch.zeros(2, 4),), str(path), verbose=False)
    target = tied_mlp(seed=3)
    paramio.load_into(target, path)  # the exporter keeps `4.weight` only; the model's tie fills `2.weight`
    assert target[2].weight is target[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(target(x), model(x), rtol=0, atol=0)


# -- PyTorch .pt -------------------------------------------------------------------------------------------
def test_torch_load_opens_paramio_files(tmp_path: Path) -> None:
    path = tmp_path / "lm.pt"
    model = tiny_lm()
    paramio.save(model, path)
    state = torch.load(path, weights_only=True)
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()  # one storage, as saved
    fresh = untied_lm()
    fresh.load_state_dict(state)
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)


def test_torch_save_files_import_with_ties(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "stock.pt"
    torch.save(model.state_dict(), path)
    ck = paramio.load(path)
    assert ck["2.weight"] is ck["4.weight"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


# -- across formats: one checkpoint, every stock reader ----------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".h5", ".onnx", ".pt"])
def test_the_same_checkpoint_reads_back_identically_from_every_format(tmp_path: Path, suffix: str) -> None:
    model = tiny_lm()
    path = tmp_path / f"lm{suffix}"
    paramio.save(model, path)
    ck = paramio.load(path)
    assert ck["head.weight"] is ck["embed.weight"]
    assert all(same(ck[k], v) for k, v in model.state_dict().items())
    assert paramio.signature(path) == paramio.signature(model)
