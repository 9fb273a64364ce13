"""Module version records (issue 14, defect 9): the `_metadata` that `state_dict()` attaches ({prefix:
{"version": N}}) survives a paramio `.pt` write, so stock `load_state_dict` sees it; and `load_into` honours
it as `load_state_dict` does (BatchNorm upgrades a version-1 state dict that lacks `num_batches_tracked`)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import paramio


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))


def trained() -> nn.Sequential:
    torch.manual_seed(0)
    model = net().train()
    for _ in range(3):
        model(torch.randn(8, 3))
    return model


def test_a_pt_file_keeps_the_module_versions_that_load_state_dict_hands_to_batchnorm(tmp_path):
    model = trained()
    paramio.save(model, tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state._metadata["1"] == {"version": 2}  # as model.state_dict()._metadata has it
    assert json.loads(paramio.read_manifest(tmp_path / "m.pt").metadata["paramio.module_versions"]) == {"1": 2}
    fresh = net()
    fresh.load_state_dict(state)
    assert fresh[1].num_batches_tracked.item() == 3


@pytest.mark.parametrize("suffix", ["pt", "safetensors", "h5"])
def test_the_versions_travel_through_convert_back_to_pt(tmp_path, suffix):
    model = trained()
    paramio.save(model, tmp_path / "m.pt")
    if suffix != "pt":
        paramio.convert(tmp_path / "m.pt", tmp_path / f"m.{suffix}")
    paramio.convert(tmp_path / f"m.{suffix}", tmp_path / "back.pt")
    assert torch.load(tmp_path / "back.pt", weights_only=True)._metadata["1"] == {"version": 2}


def old_batchnorm_checkpoint(model: nn.Module, path, version: int) -> None:
    """A state dict as torch < 0.4.1 wrote it: BatchNorm at version 1, no `num_batches_tracked`."""
    state = model.state_dict()
    del state["1.num_batches_tracked"]
    state._metadata["1"]["version"] = version
    torch.save(state, path)


def test_load_into_upgrades_an_old_batchnorm_checkpoint_as_load_state_dict_does(tmp_path):
    model = trained()
    old_batchnorm_checkpoint(model, tmp_path / "old.pt", version=1)
    stock = net()
    stock.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))  # torch accepts it

    fresh = net()
    report = paramio.load_into(fresh, tmp_path / "old.pt")
    assert report.ok and "1.num_batches_tracked" in report.loaded
    assert torch.equal(fresh[1].running_mean, model[1].running_mean)
    assert fresh[1].num_batches_tracked.item() == stock[1].num_batches_tracked.item() == 0


def test_load_into_refuses_what_load_state_dict_refuses_a_current_batchnorm_missing_its_counter(tmp_path):
    model = trained()
    old_batchnorm_checkpoint(model, tmp_path / "broken.pt", version=2)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        net().load_state_dict(torch.load(tmp_path / "broken.pt", weights_only=True))
    with pytest.raises(paramio.errors.ValidationError, match="`1.num_batches_tracked`: missing"):
        paramio.load_into(net(), tmp_path / "broken.pt")


def test_a_file_without_version_records_is_read_as_load_state_dict_reads_a_plain_dict(tmp_path):
    """safetensors from another tool records no versions: torch passes none, and BatchNorm fills in."""
    model = trained()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    paramio.save(state, tmp_path / "plain.safetensors")
    assert "paramio.module_versions" not in paramio.read_manifest(tmp_path / "plain.safetensors").metadata
    fresh = net()
    assert paramio.load_into(fresh, tmp_path / "plain.safetensors").ok
    assert torch.equal(fresh[1].running_var, model[1].running_var)


def test_a_meta_device_batchnorm_gets_a_fresh_counter_from_the_upgrade(tmp_path):
    model = trained()
    old_batchnorm_checkpoint(model, tmp_path / "old.pt", version=1)
    with torch.device("meta"):
        fresh = net()
    assert paramio.load_into(fresh, tmp_path / "old.pt").ok
    assert fresh[1].num_batches_tracked.device.type == "cpu"
    assert fresh[1].num_batches_tracked.item() == 0
    assert torch.equal(fresh[0].weight, model[0].weight)
