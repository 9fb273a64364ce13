"""Sharded folders (the Hugging Face layout): paramio writes them as huggingface_hub plans them, reads what
transformers and huggingface_hub write, and stock clients read what paramio writes; ties survive every way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import paramio
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm
from paramio.sharding import parse_size, plan_shards

from .conftest import untied_lm

hub = pytest.importorskip("huggingface_hub")

LAYOUT = {"safetensors": ("model", ".safetensors"), "torch": ("pytorch_model", ".bin")}


def big_lm_state(layers: int = 6, dim: int = 64) -> dict[str, torch.Tensor]:
    """A model-like state dict with tensors of several sizes and a tied head."""
    g = torch.Generator().manual_seed(0)
    out = {"embed.weight": torch.randn(100, dim, generator=g)}
    for i in range(layers):
        out[f"layers.{i}.weight"] = torch.randn(dim * (1 + i % 3), dim, generator=g)
        out[f"layers.{i}.bias"] = torch.randn(dim, generator=g)
    out["huge.weight"] = torch.randn(200, dim, generator=g)
    out["norm.weight"] = torch.ones(dim)
    out["head.weight"] = out["embed.weight"]
    return out


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# -- planning and the index: exactly huggingface_hub's ------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 4000, 20_000, 33_000, 60_000, "50KB", 10**9])
def test_shards_are_planned_as_huggingface_hubs_splitter_plans_them(limit: int | str) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    state = big_lm_state()
    split = split_torch_state_dict_into_shards(state, max_shard_size=limit)
    stored = [(n, t.nbytes) for n, t in state.items() if n != "head.weight"]
    plan = plan_shards(stored, parse_size(limit))
    theirs = [[n for n in names if n != "head.weight"] for names in split.filename_to_tensors.values()]
    assert plan == theirs
    # the tie stays with its canonical in the same shard, in both
    assert split.tensor_to_filename["head.weight"] == split.tensor_to_filename["embed.weight"]


@pytest.mark.parametrize("limit", [20_000, "40KB"])
def test_index_is_huggingface_hubs_index_plus_the_manifest(tmp_path: Path, limit: int | str) -> None:
    from huggingface_hub import save_torch_state_dict

    state = big_lm_state()
    (tmp_path / "hub").mkdir()
    save_torch_state_dict(dict(state), tmp_path / "hub", max_shard_size=limit)
    paramio.save(state, tmp_path / "ours", max_shard_size=limit)  # no suffix: a folder
    theirs = json.loads((tmp_path / "hub/model.safetensors.index.json").read_text())
    ours = json.loads((tmp_path / "ours/model.safetensors.index.json").read_text())
    manifest = ours["metadata"].pop("paramio.manifest")
    assert ours == theirs  # total_size, the alias pair {"head.weight": "embed.weight"}, every shard assignment
    assert list(ours["weight_map"]) == list(theirs["weight_map"]) and ours["metadata"]["head.weight"] == "embed.weight"
    assert paramio.Manifest.from_json(manifest).ties[0].aliases == ("head.weight",)
    assert shard_files(tmp_path / "ours") == shard_files(tmp_path / "hub")


def test_sizes_are_ints_or_strings_in_powers_of_1000_or_1024() -> None:
    assert parse_size(123) == 123
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5 kib") == 1536
    for bad in ("5 apples", "", "-3MB", 0, -1, 2.5, True, "GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)  # type: ignore[arg-type]


# -- the user's story: save a folder, load it back -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_sharded_round_trip_keeps_ties_values_and_each_shard_is_a_valid_file(tmp_path: Path, fmt: str) -> None:
    model = tiny_lm()
    prefix, suffix = LAYOUT[fmt]
    folder = tmp_path / "out"
    written = paramio.save(model, f"{folder}/", format=fmt, max_shard_size=3000)
    shards = [f for f in shard_files(folder) if f.startswith(f"{prefix}-")]
    assert len(shards) == 3 and shard_files(folder) == [*shards, f"{prefix}{suffix}.index.json"]
    ck = paramio.load(folder)
    assert ck["head.weight"] is ck["embed.weight"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(ck[name], tensor), name
    assert paramio.read_manifest(folder) == written == paramio.read_manifest(folder / f"{prefix}{suffix}.index.json")
    assert paramio.validate(folder).ok
    fresh = untied_lm()
    paramio.load_into(fresh, folder)
    assert fresh.head.weight is fresh.embed.weight
    # each shard alone: a paramio file that validates, readable by the stock tool
    held = []
    for shard in shards:
        assert paramio.validate(folder / shard).ok, shard
        if fmt == "safetensors":
            with safe_open(folder / shard, framework="pt") as f:
                held += [k for k in f.keys()]
                for k in f.keys():
                    assert torch.equal(f.get_tensor(k), model.state_dict()[k])
        else:
            state = torch.load(folder / shard, weights_only=True)
            held += [k for k in state if k != "head.weight"]
            for k, v in state.items():
                assert torch.equal(v, model.state_dict()[k])
    assert sorted(held) == sorted(t.name for t in written.tensors)


def test_convert_between_folders_and_files_both_ways(tmp_path: Path) -> None:
    model = tied_mlp()
    paramio.save(model, tmp_path / "one.safetensors")
    paramio.convert(tmp_path / "one.safetensors", f"{tmp_path}/pt/", format="torch", max_shard_size=200)
    assert len([f for f in shard_files(tmp_path / "pt") if f.endswith(".bin")]) > 1
    paramio.convert(tmp_path / "pt", tmp_path / "st/model.safetensors.index.json", max_shard_size="300B")
    paramio.convert(tmp_path / "st/model.safetensors.index.json", tmp_path / "back.h5")
    for target in ("pt", "st", "back.h5"):
        assert paramio.diff(tmp_path / "one.safetensors", tmp_path / target).equal, target
        ck = paramio.load(tmp_path / target)
        assert ck["4.weight"] is ck["2.weight"], target
    assert paramio.signature(tmp_path / "st") == paramio.signature(model)


def test_everything_in_one_shard_writes_the_single_file_and_removes_the_old_shards(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=3000)
    paramio.save(tiny_lm(seed=1), folder)  # an existing folder; the default limit (5GB) fits everything
    assert shard_files(folder) == ["model.safetensors"]
    ck = paramio.load(folder)
    assert torch.equal(ck["embed.weight"], tiny_lm(seed=1).embed.weight) and ck["head.weight"] is ck["embed.weight"]
    paramio.save(tiny_lm(seed=2), f"{folder}/", max_shard_size=3000)  # and back: the single file goes
    assert "model.safetensors" not in shard_files(folder) and len(shard_files(folder)) == 4
    assert torch.equal(paramio.load(folder)["embed.weight"], tiny_lm(seed=2).embed.weight)


def test_resaving_with_fewer_shards_leaves_no_stale_shard_and_same_input_same_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=1000)
    many = shard_files(folder)
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=3000)
    assert len(shard_files(folder)) == 4 < len(many)
    assert paramio.validate(folder).ok and sorted(os.listdir(folder)) == shard_files(folder)  # nothing hidden
    first = {n: (folder / n).read_bytes() for n in shard_files(folder)}
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=3000)  # the same names again
    assert {n: (folder / n).read_bytes() for n in shard_files(folder)} == first


def test_unlisted_shard_is_ignored_by_load_and_a_validate_problem(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=3000)
    (folder / "model-00004-of-00004.safetensors").write_bytes(b"left by a killed write")
    assert paramio.load(folder)["head.weight"] is not None
    report = paramio.validate(folder)
    assert not report.ok and any("model-00004-of-00004.safetensors" in p and "does not list" in p
                                 for p in report.problems)


def test_folders_refuse_formats_without_a_sharded_layout(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="hdf5 has no sharded folder layout"):
        paramio.save(tiny_lm(), f"{tmp_path}/h5/", format="hdf5")
    with pytest.raises(FormatError, match="max_shard_size writes a sharded folder"):
        paramio.save(tiny_lm(), tmp_path / "m.h5", max_shard_size="1MB")
    with pytest.raises(FormatError, match="max_shard_size writes a sharded folder"):
        paramio.convert(paramio.examples.__file__, tmp_path / "m.onnx", max_shard_size=10)
    with pytest.raises(FormatError, match="a folder without a checkpoint"):
        paramio.load(tmp_path)
    assert not (tmp_path / "h5").exists() or not any((tmp_path / "h5").iterdir())


# -- folders written by the stock tools ------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_huggingface_hub_folders_import_with_their_ties(tmp_path: Path, safe: bool) -> None:
    from huggingface_hub import save_torch_state_dict

    state = big_lm_state()
    save_torch_state_dict(dict(state), tmp_path, max_shard_size=20_000, safe_serialization=safe)
    assert len(list(tmp_path.glob("*-of-*"))) > 2
    ck = paramio.load(tmp_path)
    assert ck["head.weight"] is ck["embed.weight"]
    assert [(g.canonical, g.aliases) for g in ck.ties] == [("embed.weight", ("head.weight",))]
    for name, tensor in state.items():
        assert torch.equal(ck[name], tensor), name
    assert paramio.validate(tmp_path).ok


# -- transformers, both ways ---------------------------------------------------------------------------------


def _gpt2():  # noqa: ANN202
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers, config, transformers.GPT2LMHeadModel(config).eval()


TOKENS = torch.tensor([[1, 5, 9, 2, 7]])


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_transformers_and_huggingface_hub_load_a_paramio_folder(tmp_path: Path, fmt: str) -> None:
    transformers, config, model = _gpt2()
    paramio.save(model, f"{tmp_path}/", format=fmt, max_shard_size=20_000)
    config.save_pretrained(tmp_path)
    assert len(list(tmp_path.glob("*-of-*"))) > 3
    loaded, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS).logits, model(TOKENS).logits)
    from huggingface_hub import load_torch_model

    other = transformers.GPT2LMHeadModel(config).eval()
    result = load_torch_model(other, tmp_path, safe=fmt == "safetensors", weights_only=True)
    # safetensors stores the alias once (as huggingface_hub's own save does): the model's tie fills it; a .bin
    # shard holds it natively
    assert list(result.missing_keys) == (["lm_head.weight"] if fmt == "safetensors" else [])
    assert not result.unexpected_keys and other.lm_head.weight is other.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(other(TOKENS).logits, model(TOKENS).logits)


@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_transformers_save_pretrained_folders_load_into_a_fresh_model(tmp_path: Path, shard: str | None,
                                                                      safe: bool) -> None:
    transformers, config, model = _gpt2()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, safe_serialization=safe, **kwargs)
    fresh = transformers.GPT2LMHeadModel(config).eval()
    report = paramio.load_into(fresh, tmp_path)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert report.filled == ("lm_head.weight",) or "lm_head.weight" in report.loaded + report.retied
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS).logits, model(TOKENS).logits)
    assert paramio.validate(tmp_path).ok  # (against the model: the dropped head is the tie audit's note)
    ck = paramio.load(tmp_path)
    assert torch.equal(ck["transformer.wte.weight"], model.transformer.wte.weight)


# -- big models: meta device, one tensor at a time ------------------------------------------------------------


def test_meta_device_model_is_materialized_from_a_sharded_folder_one_tensor_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paramio.locations.sharded import ShardedSource

    model = tiny_lm()
    paramio.save(model, f"{tmp_path}/", max_shard_size=1000)
    reads: list[str] = []
    real = ShardedSource.read
    monkeypatch.setattr(ShardedSource, "read", lambda self, name: reads.append(name) or real(self, name))
    with torch.device("meta"):
        empty = tiny_lm()
    paramio.load_into(empty, tmp_path)
    assert not any(t.is_meta for t in empty.state_dict().values())
    assert empty.head.weight is empty.embed.weight
    assert sorted(reads) == sorted(t.name for t in paramio.read_manifest(tmp_path).tensors)  # each read once
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(empty(tokens), model(tokens))


def test_read_manifest_of_a_folder_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paramio.locations.sharded import ShardedSource

    paramio.save(tiny_lm(), f"{tmp_path}/", max_shard_size=1000)
    monkeypatch.setattr(ShardedSource, "read", lambda self, name: pytest.fail(f"read {name}"))
    assert len(paramio.read_manifest(tmp_path).tensors) == 9


def test_a_views_base_and_its_view_stay_in_one_shard(tmp_path: Path) -> None:
    base = torch.arange(64.0).reshape(8, 8)
    state = {"a": torch.randn(300), "base": base, "view": base[2:4], "z": torch.randn(300)}
    paramio.save(state, f"{tmp_path}/", max_shard_size=1200)
    ck = paramio.load(tmp_path)
    assert ck["view"]._base is ck["base"] or ck["view"].untyped_storage().data_ptr() == ck["base"].untyped_storage().data_ptr()
    assert torch.equal(ck["view"], base[2:4])


def test_models_with_sequential_ties_round_trip_through_bin_shards(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    model.append(model[0])
    paramio.save(model, tmp_path / "pytorch_model.bin.index.json", max_shard_size=100)
    ck = paramio.load(tmp_path)
    assert ck["2.weight"] is ck["0.weight"]
