"""Training checkpoints written by torch.save the way tutorials and trainers write them (issue 14, defect 8):
the model's state dict is found inside the usual wrappers, DataParallel/DDP's `module.` prefix is taken off
(and the strip reported), everything else is listed as skipped, and load_into puts the weights into the
model they came from."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import paramio
from paramio.examples import tiny_lm


def trained():
    """A TinyLM after one Adam step, and its optimizer (whose moments must not come in as parameters)."""
    torch.manual_seed(0)
    model = tiny_lm()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    return model, optimizer


def assert_loaded(model, fresh):
    assert fresh.head.weight is fresh.embed.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


LAYOUTS = {
    # https://pytorch.org/tutorials/beginner/saving_loading_models.html, "Saving & Loading a General Checkpoint"
    "pytorch tutorial": lambda m, o: {"epoch": 3, "model_state_dict": m.state_dict(),
                                      "optimizer_state_dict": o.state_dict(), "loss": 0.25},
    "lightning": lambda m, o: {"epoch": 3, "global_step": 12, "pytorch-lightning_version": "2.4.0",
                               "state_dict": m.state_dict(), "optimizer_states": [o.state_dict()],
                               "lr_schedulers": []},
    "fairseq": lambda m, o: {"args": None, "model": m.state_dict(), "optimizer_history": [{"num_updates": 12}],
                             "extra_state": {"epoch": 3}, "last_optimizer_state": o.state_dict()},
    "deepspeed": lambda m, o: {"module": m.state_dict(), "optimizer": o.state_dict(), "global_steps": 12},
}
SKIPPED = {
    "pytorch tutorial": ["epoch", "optimizer_state_dict", "loss"],
    "lightning": ["epoch", "global_step", "pytorch-lightning_version", "optimizer_states", "lr_schedulers"],
    "fairseq": ["args", "optimizer_history", "extra_state", "last_optimizer_state"],
    "deepspeed": ["optimizer", "global_steps"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_training_checkpoint_loads_into_its_model_with_the_rest_listed_as_skipped(tmp_path, layout):
    model, optimizer = trained()
    path = tmp_path / "checkpoint.pt"
    torch.save(LAYOUTS[layout](model, optimizer), path)

    ck = paramio.load(path)
    assert sorted(ck) == sorted(model.state_dict())  # no prefix, no optimizer moments
    assert json.loads(ck.metadata["paramio.skipped"]) == SKIPPED[layout]
    fresh = tiny_lm()
    report = paramio.load_into(fresh, path)
    assert report.ok and not report.unexpected
    assert_loaded(model, fresh)


def test_a_dataparallel_state_dict_loads_into_the_bare_model_and_the_strip_is_reported(tmp_path):
    model, _ = trained()
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(model).state_dict(), path)  # every key starts with `module.`

    manifest = paramio.read_manifest(path)
    assert manifest.metadata["paramio.stripped_prefix"] == "module."
    assert [t.name for t in manifest.tensors][:3] == ["pos", "causal_mask", "embed.weight"]
    assert manifest.ties[0].names == ("embed.weight", "head.weight")
    fresh = tiny_lm()
    assert paramio.load_into(fresh, path).ok
    assert_loaded(model, fresh)


def test_a_tutorial_checkpoint_of_a_ddp_model_is_unwrapped_and_stripped(tmp_path):
    model, optimizer = trained()
    path = tmp_path / "ddp.pt"
    wrapped = nn.DataParallel(model)
    torch.save({"epoch": 1, "model_state_dict": wrapped.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, path)
    fresh = tiny_lm()
    assert paramio.load_into(fresh, path).ok
    assert_loaded(model, fresh)
    metadata = paramio.read_manifest(path).metadata
    assert metadata["paramio.stripped_prefix"] == "module."
    assert json.loads(metadata["paramio.skipped"]) == ["epoch", "optimizer_state_dict"]


def test_names_are_kept_as_the_paramio_manifest_records_them(tmp_path):
    """A paramio file of a DataParallel model says its names are `module.…`: nothing is stripped."""
    model, _ = trained()
    wrapped = nn.DataParallel(model)
    paramio.save(wrapped, tmp_path / "dp.pt")
    manifest = paramio.read_manifest(tmp_path / "dp.pt")
    assert all(t.name.startswith("module.") for t in manifest.tensors)
    assert "paramio.stripped_prefix" not in manifest.metadata
    assert paramio.load_into(nn.DataParallel(tiny_lm()), tmp_path / "dp.pt").ok


def test_a_state_dict_where_only_some_names_have_the_prefix_is_left_alone(tmp_path):
    torch.save({"module.w": torch.ones(2), "b": torch.zeros(2)}, tmp_path / "mixed.pt")
    assert sorted(paramio.load(tmp_path / "mixed.pt")) == ["b", "module.w"]
