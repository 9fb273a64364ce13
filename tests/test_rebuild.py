"""load_into: values, identity, lazy materialization, and every way a checkpoint can disagree with a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import paramio
from paramio.errors import ValidationError
from paramio.examples import TinyLM, tied_mlp, tiny_lm

from .conftest import untied_lm, untied_mlp


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed.safetensors"
    paramio.save(tied_mlp(), path)
    return path


def test_checkpoint_object_is_a_source_too() -> None:
    model = tiny_lm()
    fresh = untied_lm()
    report = paramio.load_into(fresh, paramio.collect(model))
    assert fresh.head.weight is fresh.embed.weight and report.retied == (("head.weight", "embed.weight"),)


def test_model_alias_missing_from_file_is_filled_from_its_canonical(tmp_path: Path) -> None:
    # what exporters that drop alias names write: only one name per tie group
    state = {k: v for k, v in tied_mlp().state_dict().items() if not k.startswith("4.")}
    path = tmp_path / "dropped.safetensors"
    paramio.save(state, path)
    model = tied_mlp(seed=3)
    report = paramio.load_into(model, path)
    assert set(report.filled) == {"4.weight", "4.bias"}
    assert torch.equal(model[4].weight, state["2.weight"]) and model[2] is model[4]


def test_canonical_missing_is_filled_from_the_alias_the_file_kept(tmp_path: Path) -> None:
    # the dynamo ONNX exporter names a shared initializer after its last use
    state = {k: v for k, v in tied_mlp().state_dict().items() if not k.startswith("2.")}
    path = tmp_path / "last-use.safetensors"
    paramio.save(state, path)
    model = tied_mlp(seed=3)
    report = paramio.load_into(model, path)
    assert set(report.filled) == {"2.weight", "2.bias"}
    assert torch.equal(model[2].weight, state["4.weight"])


def test_model_tie_stored_as_different_tensors_is_a_mismatch(tmp_path: Path) -> None:
    untied = untied_mlp()
    path = tmp_path / "untied.safetensors"
    paramio.save(untied, path)
    model = tied_mlp()
    with pytest.raises(ValidationError) as info:
        paramio.load_into(model, path)
    assert len(info.value.problems) == 2
    assert "`2.weight`, `4.weight`" in info.value.problems[0] and "different tensors" in info.value.problems[0]


def test_retie_false_refuses_any_tie_difference(seed_file: Path) -> None:
    fresh = untied_mlp()
    with pytest.raises(ValidationError, match="retie=False"):
        paramio.load_into(fresh, seed_file, retie=False)
    assert fresh[2].weight is not fresh[4].weight
    # a model that already has the file's ties loads fine without re-tying
    same = tied_mlp(seed=7)
    assert paramio.load_into(same, seed_file, retie=False).ok


def test_non_strict_loads_what_fits_and_reports_the_rest(seed_file: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    before = model[6].weight.clone()
    report = paramio.load_into(model, seed_file, strict=False)
    assert not report.ok
    assert any("6.weight" in p for p in report.problems)
    assert torch.equal(model[6].weight, before)  # wrong shape: left alone
    assert torch.equal(model[0].weight, paramio.load(seed_file)["0.weight"])
    assert model[2].weight is model[4].weight


def test_dtype_mismatch_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "half.safetensors"
    paramio.save(tied_mlp(), path, dtype=torch.float16)
    with pytest.raises(ValidationError, match="float16"):
        paramio.load_into(untied_mlp(), path)
    model = untied_mlp()
    paramio.load_into(model, path, strict=False)  # non-strict: cast like load_state_dict
    assert model[0].weight.dtype == torch.float32


def test_gradients_saved_are_restored(tmp_path: Path) -> None:
    model = tied_mlp()
    model(torch.randn(3, 4)).sum().backward()
    path = tmp_path / "grads.safetensors"
    paramio.save(model, path, grads=True)
    fresh = untied_mlp()
    report = paramio.load_into(fresh, path)
    assert "2.weight" in report.grads
    assert torch.equal(fresh[2].weight.grad, model[2].weight.grad)


def test_untied_loader_silently_unties_but_paramio_does_not(seed_file: Path) -> None:
    """The problem paramio exists for: a plain load_state_dict leaves the twin untied."""
    stock = untied_mlp()
    stock.load_state_dict(paramio.load(seed_file))
    assert stock[2].weight is not stock[4].weight
    ours = untied_mlp()
    paramio.load_into(ours, seed_file)
    assert ours[2].weight is ours[4].weight


# -- models built on the meta device (how big models are built) ---------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".h5", ".onnx", ".pt"])
def test_meta_device_model_is_materialized_on_the_cpu_with_its_ties(tmp_path: Path, suffix: str) -> None:
    model = tiny_lm()
    path = tmp_path / f"lm{suffix}"
    paramio.save(model, path)
    with torch.device("meta"):
        empty = TinyLM()
    assert empty.embed.weight.is_meta and empty.head.weight is empty.embed.weight
    report = paramio.load_into(empty, path)
    assert set(report.materialized) == {"embed.weight", "pos", "norm.weight", "norm.bias", "mlp.0.weight",
                                        "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "causal_mask"}
    assert not any(t.is_meta for t in empty.state_dict().values())
    assert all(t.device.type == "cpu" for t in empty.state_dict().values())
    assert empty.head.weight is empty.embed.weight and isinstance(empty.embed.weight, nn.Parameter)
    assert empty.embed.weight.requires_grad and not empty.causal_mask.requires_grad
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(empty(tokens), model(tokens), rtol=0, atol=0)
    empty(tokens).sum().backward()  # one Parameter: the tied weight's gradient is the sum of both uses
    assert empty.embed.weight.grad is empty.head.weight.grad


def test_meta_parameters_are_each_allocated_once_and_own_their_memory(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "mlp.safetensors"
    paramio.save(model, path)
    with torch.device("meta"):
        empty = untied_mlp()
    paramio.load_into(empty, path)
    assert empty[2].weight is empty[4].weight  # the file's tie applied to the untied meta model
    pointers = [p.data_ptr() for p in empty.parameters()]
    assert len(set(pointers)) == len(pointers) == 6
    loaded = paramio.load(path)
    # the model's memory is its own, not the file's mapping: editing the model leaves a fresh load unchanged
    with torch.no_grad():
        empty[0].weight.fill_(7.0)
    assert not torch.equal(paramio.load(path)["0.weight"], empty[0].weight)
    assert all(p.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
               for p, t in zip(empty.state_dict().values(), loaded.values(), strict=True))


def test_meta_model_with_a_wrong_shape_is_refused_and_stays_on_meta(seed_file: Path) -> None:
    with torch.device("meta"):
        wrong = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                              nn.Linear(8, 3))
    with pytest.raises(ValidationError, match="6.weight"):
        paramio.load_into(wrong, seed_file)
    assert all(p.is_meta for p in wrong.parameters())


# -- model ties that a checkpoint stores as two copies (DCP, and tools that clone the head) ------------------
def test_model_tie_stored_as_equal_copies_is_restored(tmp_path: Path) -> None:
    model = tiny_lm()
    copies = {k: v.clone() for k, v in model.state_dict().items()}  # head.weight: an equal copy, no tie recorded
    path = tmp_path / "copies.safetensors"
    paramio.save(copies, path)
    assert paramio.read_manifest(path).ties == ()
    fresh = untied_lm()
    fresh.head.weight = fresh.embed.weight  # the model declares the tie
    report = paramio.load_into(fresh, path)
    assert ("head.weight", "embed.weight") in report.retied
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_model_tie_stored_as_different_copies_is_a_mismatch_naming_both(tmp_path: Path) -> None:
    model = tiny_lm()
    copies = {k: v.clone() for k, v in model.state_dict().items()}
    copies["head.weight"][0, 0] += 1  # training broke the tie
    path = tmp_path / "broken.safetensors"
    paramio.save(copies, path)
    fresh = tiny_lm(seed=5)
    before = fresh.embed.weight.detach().clone()
    with pytest.raises(ValidationError, match="different values") as info:
        paramio.load_into(fresh, path)
    assert "`embed.weight`, `head.weight`" in info.value.problems[0]
    assert torch.equal(fresh.embed.weight, before)
    report = paramio.load_into(fresh, path, strict=False)  # loads from the first name, keeps the model's tie
    assert not report.ok and fresh.head.weight is fresh.embed.weight


# -- a corrupt file leaves the model as it was ----------------------------------------------------------------
def test_a_checksum_failure_in_the_last_tensor_leaves_the_model_unchanged(tmp_path: Path) -> None:
    model = tiny_lm()
    path = tmp_path / "lm.safetensors"
    paramio.save(model, path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the causal mask, read last
    path.write_bytes(bytes(data))
    fresh = untied_lm()
    before = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(paramio.errors.FormatError, match="checksum mismatch"):
        paramio.load_into(fresh, path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert fresh.head.weight is not fresh.embed.weight
    with torch.device("meta"):
        empty = untied_lm()
    with pytest.raises(paramio.errors.FormatError, match="checksum mismatch"):
        paramio.load_into(empty, path)
    assert all(t.is_meta for t in empty.state_dict().values())
