"""The `paramio` command on sharded folders: export/convert write OUT/ (or OUT/…index.json) with
--max-shard-size; inspect/validate/diff/convert take a folder or its index; inspect shows each tensor's shard
and per-shard totals, and --json names the shard of every stored tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import paramio
from paramio.examples import tiny_lm

from .test_cli import one_line_error, run


@pytest.fixture
def lm_file(tmp_path: Path) -> Path:
    path = tmp_path / "lm.safetensors"
    paramio.save(tiny_lm(), path)
    return path


def test_convert_to_a_folder_and_inspect_it(lm_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("convert", lm_file, f"{out}/", "--max-shard-size", "3KB")
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    table = run("inspect", out).stdout
    assert "shard" in table and "3 shards" in table
    for shard in shards:
        assert shard in table
    # the alias row names its canonical's shard; the totals table counts each stored tensor once
    head_row = next(line for line in table.splitlines() if "head.weight" in line and "alias of" in line)
    assert shards[0] in head_row
    payload = json.loads(run("inspect", out / "model.safetensors.index.json", "--json").stdout)
    assert payload["format"] == "safetensors"
    assert set(payload["shards"]) == {t["name"] for t in payload["manifest"]["tensors"]}
    assert payload["shards"]["embed.weight"] == shards[0] and payload["shards"]["mlp.2.weight"] == shards[2]
    run("validate", out)
    run("diff", lm_file, out)


def test_export_to_an_index_path_writes_torch_shards(lm_file: Path, tmp_path: Path) -> None:
    index = tmp_path / "pt" / "pytorch_model.bin.index.json"
    run("export", lm_file, "-o", index, "--max-shard-size", "2500")
    assert index.exists() and len(list(index.parent.glob("pytorch_model-*-of-*.bin"))) > 1
    ck = paramio.load(index.parent)
    assert ck["head.weight"] is ck["embed.weight"]
    run("convert", index.parent, tmp_path / "back.h5")
    run("diff", tmp_path / "back.h5", lm_file)


def test_bad_shard_sizes_and_formats_are_usage_errors(lm_file: Path, tmp_path: Path) -> None:
    result = run("convert", lm_file, f"{tmp_path}/o/", "--max-shard-size", "lots", code=2)
    assert "max-shard-size" in result.stderr or "max_shard_size" in result.stderr
    one_line_error(run("convert", lm_file, tmp_path / "m.h5", "--max-shard-size", "1MB", code=2),
                   "m.h5", "max_shard_size writes a sharded folder")
    one_line_error(run("convert", lm_file, f"{tmp_path}/h/", "--format", "hdf5", code=2),
                   "hdf5 has no sharded folder layout")


def test_a_hostile_folder_is_a_one_line_error(lm_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("convert", lm_file, f"{out}/", "--max-shard-size", "3KB")
    (out / "model-00002-of-00003.safetensors").unlink()
    for command in ("inspect", "validate"):
        one_line_error(run(command, out, code=2), "model-00002-of-00003.safetensors", "shard missing")
