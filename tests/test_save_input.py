"""Bad input on the save side, and models whose state dict holds more than tensors (issue 14, defects 2, 4
and 5): every verb either keeps going, listing what it skipped, or raises one paramio error that names the
entry and the fix, before any file is written. Never a raw AttributeError, RuntimeError or pydantic error."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import paramio
from paramio.devices import available_devices
from paramio.errors import FormatError, ParamioError

FORMATS = ("safetensors", "h5", "onnx", "pt")


class WithExtraState(nn.Module):
    """A module using torch's documented get_extra_state hook (a plain dict in its state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)
        self.head.weight = self.lin.weight  # a tie, to see it survive next to the extra state
        self.note = "v1"

    def get_extra_state(self) -> dict:
        return {"note": self.note}

    def set_extra_state(self, state: dict) -> None:
        self.note = state["note"]


def quantized_model() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), {nn.Linear},
                                                      dtype=torch.qint8)


# -- defect 2: non-tensor state-dict entries ------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_module_with_extra_state_saves_its_tensors_and_lists_the_extra_state(tmp_path, suffix):
    model = WithExtraState()
    assert paramio.find_ties(model)[0].names == ("lin.weight", "head.weight")
    assert [t.name for t in paramio.signature(model).tensors] == ["lin.weight", "lin.bias", "head.bias"]
    ck = paramio.collect(model)
    assert json.loads(ck.metadata["paramio.skipped"]) == ["_extra_state"]
    path = tmp_path / f"m.{suffix}"
    paramio.save(model, path)
    assert json.loads(paramio.read_manifest(path).metadata["paramio.skipped"]) == ["_extra_state"]

    fresh = WithExtraState()
    fresh.note = "untouched"
    report = paramio.load_into(fresh, path)
    assert report.skipped == ("_extra_state",)
    assert fresh.head.weight is fresh.lin.weight
    assert torch.equal(fresh.lin.weight, model.lin.weight)
    assert fresh.note == "untouched"  # left as it was, and the report says so


def test_a_dynamically_quantized_model_is_refused_by_every_verb_naming_its_packed_parameters(tmp_path):
    model = quantized_model()
    assert paramio.find_ties(model) == []  # nothing tied: answering needs no refusal
    for verb in (lambda: paramio.signature(model), lambda: paramio.collect(model),
                 lambda: paramio.save(model, tmp_path / "q.safetensors")):
        with pytest.raises(FormatError, match=r"`0\._packed_params\._packed_params`.*quantized.*float model"):
            verb()
    paramio.save({"0.scale": torch.ones(()), "0.zero_point": torch.zeros((), dtype=torch.int64)},
                 tmp_path / "scale.safetensors")
    with pytest.raises(FormatError, match=r"`0\._packed_params\._packed_params`"):
        paramio.load_into(model, tmp_path / "scale.safetensors")
    assert not (tmp_path / "q.safetensors").exists()


def test_a_mapping_with_plain_values_saves_the_tensors_and_lists_the_rest(tmp_path):
    paramio.save({"w": torch.ones(2), "epoch": 3, "dtype": torch.float16}, tmp_path / "m.safetensors")
    ck = paramio.load(tmp_path / "m.safetensors")
    assert list(ck) == ["w"]
    assert json.loads(ck.metadata["paramio.skipped"]) == ["epoch", "dtype"]
    with pytest.raises(FormatError, match="entry `model_state_dict`: a dict holding tensors"):
        paramio.save({"model_state_dict": {"w": torch.ones(2)}}, tmp_path / "n.safetensors")


# -- defect 4: tensors, names and metadata no file can hold -----------------------------------------------
BAD_TENSORS = {
    "sparse": (lambda: torch.eye(3).to_sparse(), r"tensor `a`: a torch.sparse_coo tensor.*\.to_dense\(\)"),
    "meta": (lambda: torch.empty(3, device="meta"), r"tensor `a`: on the meta device.*load_into"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
                  r"tensor `a`: quantized \(torch.qint8\).*\.dequantize\(\)"),
}


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_a_tensor_no_format_can_store_is_refused_before_any_file_is_written(tmp_path, suffix, kind):
    make, message = BAD_TENSORS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor = make()
    with pytest.raises(FormatError, match=message):
        paramio.save({"w": torch.ones(2), "a": tensor}, tmp_path / f"m.{suffix}")
    assert list(tmp_path.iterdir()) == []


BAD_NAMES = {
    "empty": ("", r"name '': empty"),
    "too long": ("x" * 4097, r"name of 4097 characters, over the limit of 4096"),
    "lone surrogate": ("a\udc80", r"not valid Unicode text \(a lone surrogate\)"),
    "gradient prefix": ("grad/w", r"`grad/w`: names starting with `grad/` are reserved for gradients"),
}


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
def test_a_name_no_format_reads_back_is_refused_at_save(tmp_path, suffix, kind):
    name, message = BAD_NAMES[kind]
    with pytest.raises(FormatError, match=message):
        paramio.save({name: torch.ones(2)}, tmp_path / f"m.{suffix}")
    w = torch.ones(2)
    with pytest.raises(FormatError, match=message):  # an alias too: it is a name in every format
        paramio.save({"w": w, name: w}, tmp_path / f"m.{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_a_4096_character_name_is_the_longest_that_saves(tmp_path):
    name = "x" * 4096
    paramio.save({name: torch.ones(2)}, tmp_path / "m.safetensors")
    assert list(paramio.load(tmp_path / "m.safetensors")) == [name]


def test_hdf5_refuses_a_nul_in_a_name_which_its_links_cannot_hold(tmp_path):
    with pytest.raises(FormatError, match=r"'a\\x00b': HDF5 link names end at a NUL"):
        paramio.save({"a\x00b": torch.ones(2)}, tmp_path / "m.h5")
    paramio.save({"a\x00b": torch.ones(2)}, tmp_path / "m.safetensors")  # others keep it
    assert list(paramio.load(tmp_path / "m.safetensors")) == ["a\x00b"]


@pytest.mark.parametrize("alias", ["grads", "grads/w", "grads.w"])
def test_hdf5_keeps_an_alias_named_like_its_gradient_group(tmp_path, alias):
    w = torch.arange(3.0)
    paramio.save({"w": w, alias: w}, tmp_path / "m.h5")
    ck = paramio.load(tmp_path / "m.h5")
    assert ck[alias] is ck["w"]
    assert ck.grads == {}
    assert torch.equal(ck["w"], w)


@pytest.mark.parametrize("metadata", [{"epoch": 3}, {"tags": ["a"]}, {1: "x"}, {"k": "\udc80"}])
def test_metadata_that_is_not_text_is_refused_with_a_paramio_error_naming_the_key(tmp_path, metadata):
    with pytest.raises(FormatError, match=r"metadata .*(strings to strings|lone surrogate)") as info:
        paramio.save({"w": torch.ones(2)}, tmp_path / "m.safetensors", metadata=metadata)
    assert repr(next(iter(metadata))) in str(info.value)
    ck = paramio.collect(nn.Linear(2, 2))
    with pytest.raises(FormatError, match="metadata"):
        paramio.save(ck, tmp_path / "m.safetensors", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


# -- defect 5: devices --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "mps", "cuda", "cuda:7", "xla"])
def test_loading_onto_a_device_this_machine_lacks_names_it_and_what_is_available(tmp_path, device):
    if device in available_devices() or (device == "cuda" and torch.cuda.is_available()):
        pytest.skip(f"{device} is available here")
    paramio.save({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    with pytest.raises(FormatError, match=rf"device '{device}': .*available here: cpu") as info:
        paramio.load(tmp_path / "m.safetensors", device=device)
    assert isinstance(info.value, ParamioError)
    if device == "gpu":
        assert "'cuda'" in str(info.value)


def test_loading_onto_the_cpu_by_any_spelling_works(tmp_path):
    paramio.save({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        assert paramio.load(tmp_path / "m.safetensors", device=device)["w"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loading_onto_cuda_where_it_exists(tmp_path):
    paramio.save({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    assert paramio.load(tmp_path / "m.safetensors", device="cuda")["w"].is_cuda
