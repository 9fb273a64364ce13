"""Tie groups, partial aliases and collect(): who is one tensor, and which name is canonical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import paramio
from paramio.errors import TieError, UninitializedParameterError
from paramio.examples import tied_mlp, tiny_lm


def groups(obj) -> list[tuple[str, tuple[str, ...]]]:  # noqa: ANN001
    return [(g.canonical, g.aliases) for g in paramio.find_ties(obj)]


def test_seed_collect_lists_every_name_with_aliases_as_the_same_tensor() -> None:
    ck = paramio.collect(tied_mlp())
    assert list(ck) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias"]
    assert ck["4.weight"] is ck["2.weight"] and ck["4.bias"] is ck["2.bias"]
    assert [t.name for t in ck.manifest.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]


def test_find_ties_on_module_and_on_its_detached_state_dict_agree() -> None:
    model = tied_mlp()
    expected = [("2.weight", ("4.weight",)), ("2.bias", ("4.bias",))]
    assert groups(model) == expected
    assert groups(model.state_dict()) == expected  # detached: found by storage, offset, shape, strides, dtype


def test_lazy_module_reused_twice_is_tied_before_initialization() -> None:
    assert groups(tied_mlp(initialized=False)) == [("2.weight", ("4.weight",)), ("2.bias", ("4.bias",))]


def test_tie_by_assignment_uses_registration_order_for_the_canonical() -> None:
    class GPT2Like(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.wte = nn.Embedding(10, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.transformer.wte.weight

    assert groups(GPT2Like()) == [("transformer.wte.weight", ("lm_head.weight",))]
    assert groups(tiny_lm()) == [("embed.weight", ("head.weight",))]


def test_buffers_count_like_parameters() -> None:
    model = nn.Module()
    table = torch.arange(6.0)
    model.register_buffer("a", table)
    model.register_buffer("b", table)
    model.register_buffer("c", table.clone())
    assert groups(model) == [("a", ("b",))]
    ck = paramio.collect(model)
    assert [t.kind for t in ck.manifest.tensors] == ["buffer", "buffer"]
    assert [t.name for t in paramio.collect(model, buffers=False).manifest.tensors] == []


def test_empty_tensors_are_tied_only_by_identity() -> None:
    shared = nn.Parameter(torch.empty(0, 3))
    model = nn.Module()
    model.a, model.b, model.c = shared, shared, nn.Parameter(torch.empty(0, 3))
    assert groups(model) == [("a", ("b",))]
    # two different empty tensors both have data_ptr 0: never one tensor by address
    assert groups({"x": torch.empty(0), "y": torch.empty(0)}) == []


def test_non_overlapping_slices_of_one_storage_are_independent(tmp_path: Path) -> None:
    flat = torch.arange(10.0)
    first, second = flat[:5], flat[5:]
    manifest = paramio.save({"first": first, "second": second}, tmp_path / "s.safetensors")
    assert [t.name for t in manifest.tensors] == ["first", "second"] and manifest.ties == () and manifest.views == ()


def test_overlap_without_a_covering_base_raises_tie_error_naming_both(tmp_path: Path) -> None:
    flat = torch.arange(10.0)
    with pytest.raises(TieError, match=r"`a`.*`b`"):
        paramio.save({"a": flat[0:6], "b": flat[4:10]}, tmp_path / "unused.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_views_of_different_dtype_raise_tie_error(tmp_path: Path) -> None:
    base = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(TieError, match="different dtypes"):
        paramio.save({"a": base, "b": base.view(torch.float32)[1:]}, tmp_path / "unused.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_tensors_over_the_same_memory_from_different_storages_are_tied_or_views(tmp_path: Path) -> None:
    # torch.from_numpy twice: two storage objects, one memory. Editing one edits the other, so they are one.
    array = np.arange(12, dtype=np.float32)
    a, b = torch.from_numpy(array), torch.from_numpy(array)
    assert groups({"a": a, "b": b}) == [("a", ("b",))]
    # a numpy view at an offset: a partial alias of the whole, whatever storage object torch made for it
    manifest = paramio.save({"whole": a, "tail": torch.from_numpy(array[4:])}, tmp_path / "v.safetensors")
    assert [(v.name, v.base, v.offset, v.shape) for v in manifest.views] == [("tail", "whole", 4, (8,))]
    loaded = paramio.load(tmp_path / "v.safetensors")
    loaded["whole"][5] = -1.0
    assert loaded["tail"][1] == -1.0


@pytest.mark.parametrize("where", ["address", "storage"])
def test_ties_and_views_by_storage_where_data_ptr_is_no_address(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # On MPS data_ptr() is a buffer handle: tensors are then placed by storage and offset. The CPU takes the
    # same path here, so that path must find the same ties and views as addresses do.
    from paramio import ties

    if where == "storage":
        monkeypatch.setattr(ties, "_place", ties._storage_place)
    flat = torch.arange(24.0)
    named = [("whole", flat), ("again", flat.view(24)), ("rows", flat.view(4, 6)[1:3]), ("col", flat.view(4, 6)[:, 2]),
             ("apart", torch.arange(24.0)), ("other", torch.zeros(3))]
    plan = ties.plan_ties(named)
    assert [(g.canonical, g.aliases) for g in plan.ties] == [("whole", ("again",))]
    assert [(v.name, v.base, v.offset, v.shape, v.stride) for v in plan.views] == [
        ("rows", "whole", 6, (2, 6), (6, 1)), ("col", "whole", 2, (4,), (6,))]
    assert plan.stored == ("whole", "apart", "other")


def test_a_view_that_starts_inside_an_element_is_refused(tmp_path: Path) -> None:
    raw = np.zeros(40, dtype=np.uint8)
    whole = torch.from_numpy(raw.view(np.float32))
    shifted = torch.from_numpy(raw[2:38].view(np.float32))
    with pytest.raises(TieError, match="between two elements"):
        paramio.save({"whole": whole, "shifted": shifted}, tmp_path / "unused.safetensors")


def test_uninitialized_lazy_parameter_is_named_with_the_fix() -> None:
    with pytest.raises(UninitializedParameterError, match=r"tensor `0.weight`: uninitialized lazy parameter.*forward"):
        paramio.collect(tied_mlp(initialized=False))


def test_collect_with_grads() -> None:
    model = tied_mlp()
    model(torch.randn(2, 4)).sum().backward()
    ck = paramio.collect(model, grads=True)
    assert set(ck.grads) == {"0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"}
    assert ck.grads["2.weight"] is not model[2].weight.grad  # detached, same memory
    assert ck.grads["2.weight"].data_ptr() == model[2].weight.grad.data_ptr()
    assert [t.name for t in ck.manifest.tensors if t.kind == "gradient"][0] == "grad/0.weight"
