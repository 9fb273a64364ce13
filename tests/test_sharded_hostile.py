"""Hostile sharded folders: every way an index or its shards can lie is a FormatError naming the shard (or
the index), never a read outside the folder, a crash or a huge allocation."""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import paramio
import paramio.limits
from paramio.errors import FormatError
from paramio.examples import tiny_lm

INDEX = "model.safetensors.index.json"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    paramio.save(tiny_lm(), f"{out}/", max_shard_size=3000)
    return out


def edit_index(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / INDEX
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def first_shard(doc: dict) -> str:
    return doc["weight_map"]["embed.weight"]


def refused(folder: Path, *match: str) -> str:
    """Every reading verb refuses the folder with a FormatError whose message has each of ``match``."""
    messages = []
    for verb in (paramio.read_manifest, paramio.load, lambda p: paramio.convert(p, p.parent / "out.safetensors")):
        with pytest.raises(FormatError) as e:
            verb(folder)
        messages.append(str(e.value))
        for m in match:
            assert m in str(e.value), (m, str(e.value))
    assert not (folder.parent / "out.safetensors").exists()
    return messages[0]


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd.safetensors", "an absolute path"),
    ("../outside.safetensors", "climbs out of the folder"),
    ("sub/../../outside.safetensors", "climbs out of the folder"),
    ("model.bin", "not a safetensors file name"),
    ("a\\..\\b.safetensors", "not a plain relative file name"),
    (INDEX, "not a safetensors file name"),
])
def test_shard_names_outside_the_folder_are_refused(folder: Path, name: str, why: str) -> None:
    outside = folder.parent / "outside.safetensors"
    outside.write_bytes((folder / "model-00001-of-00003.safetensors").read_bytes())
    edit_index(folder, lambda d: d["weight_map"].update(dict.fromkeys(
        [k for k, v in d["weight_map"].items() if v == "model-00001-of-00003.safetensors"], name)))
    assert why in refused(folder, why)


def test_a_symlinked_shard_leading_outside_is_refused(folder: Path) -> None:
    shard = folder / "model-00002-of-00003.safetensors"
    outside = folder.parent / "secret.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    refused(folder, "model-00002-of-00003.safetensors", "leads outside the folder")
    # a symlinked folder inside is refused the same way
    (folder / "sub").symlink_to(folder.parent)
    edit_index(folder, lambda d: d["weight_map"].update(
        {k: "sub/secret.safetensors" for k, v in d["weight_map"].items() if v == shard.name}))
    refused(folder, "sub/secret.safetensors", "leads outside the folder")


def test_a_symlink_inside_the_folder_is_fine(folder: Path) -> None:
    shard = folder / "model-00002-of-00003.safetensors"
    (folder / "store").mkdir()
    shard.rename(folder / "store" / shard.name)
    shard.symlink_to(folder / "store" / shard.name)
    assert paramio.load(folder)["head.weight"] is not None


def test_a_missing_shard_is_named(folder: Path) -> None:
    (folder / "model-00003-of-00003.safetensors").unlink()
    refused(folder, "model-00003-of-00003.safetensors", "shard missing")


def test_a_weight_map_naming_a_tensor_the_shard_lacks(folder: Path) -> None:
    edit_index(folder, lambda d: d["weight_map"].update({"ghost.weight": "model-00002-of-00003.safetensors"}))
    refused(folder, "model-00002-of-00003.safetensors", "`ghost.weight`", "does not hold it")


def test_a_tensor_placed_in_the_wrong_shard(folder: Path) -> None:
    edit_index(folder, lambda d: d["weight_map"].update({"embed.weight": "model-00003-of-00003.safetensors"}))
    refused(folder, "model-00001-of-00003.safetensors", "`embed.weight`", "places it in model-00003")


def test_a_tensor_in_two_shards(folder: Path) -> None:
    import safetensors.torch

    # shard 3 rewritten by the stock tool to hold embed.weight as well
    path = folder / "model-00003-of-00003.safetensors"
    tensors = safetensors.torch.load_file(path)
    tensors["embed.weight"] = torch.zeros(32, 16)
    safetensors.torch.save_file(tensors, path)
    refused(folder, "model-00003-of-00003.safetensors", "`embed.weight`")
    # and the index listing a name twice
    text = (folder / INDEX).read_text().replace('"weight_map": {', '"weight_map": {"pos": "model-00002-of-00003.safetensors", ', 1)
    (folder / INDEX).write_text(text)
    refused(folder, INDEX, "`pos` appears twice")


@pytest.mark.parametrize("text, why", [
    (b"", "not UTF-8 JSON"),
    (b"{not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", "weight_map"),
    (b'{"weight_map": []}', "weight_map"),
    (b'{"weight_map": {"a": 3}}', "shard file name"),
    (b'{"weight_map": {"": "model-00001-of-00003.safetensors"}}', "shard file name"),
    (b'{"metadata": [], "weight_map": {}}', "metadata"),
    (b'{"metadata": {"total_size": -1}, "weight_map": {}}', "total_size"),
    (b'{"metadata": {"total_size": "12"}, "weight_map": {}}', "total_size"),
    (b'{"metadata": {"paramio.manifest": 3}, "weight_map": {}}', "paramio.manifest"),
    (b"[" * 100_000 + b"]" * 100_000, "not UTF-8 JSON"),
])
def test_an_index_that_is_not_an_index(folder: Path, text: bytes, why: str) -> None:
    (folder / INDEX).write_bytes(text)
    refused(folder, INDEX, why)


def test_a_huge_index_is_refused_before_it_is_read(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paramio.limits, "MAX_INDEX_BYTES", 4096)
    with open(folder / INDEX, "ab") as fh:
        fh.write(b" " * 5000)
    refused(folder, INDEX, "cap of 4096")


def test_too_many_tensors_in_the_index(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paramio.limits, "MAX_TENSORS", 3)
    refused(folder, INDEX, "more than the cap of 3")


@pytest.mark.parametrize("total", [1, 10**15])
def test_an_index_lying_about_total_size(folder: Path, total: int) -> None:
    edit_index(folder, lambda d: d["metadata"].update(total_size=total))
    refused(folder, INDEX, f"total_size {total} is false")


def test_a_shard_of_another_checkpoint_disagrees_with_the_index(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    paramio.save(tiny_lm(seed=5), f"{other}/", max_shard_size=3000)
    name = "model-00002-of-00003.safetensors"
    (folder / name).write_bytes((other / name).read_bytes())
    refused(folder, name, "the shard's manifest and the index's disagree")
    assert any(name in p for p in paramio.validate(folder).problems)


def test_a_corrupt_shard_is_named(folder: Path) -> None:
    name = "model-00002-of-00003.safetensors"
    (folder / name).write_bytes(b"\x00" * 7)
    refused(folder, name)
    paramio.save(tiny_lm(), f"{folder}/", max_shard_size=3000)
    raw = bytearray((folder / name).read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in a tensor: the checksum names the shard
    (folder / name).write_bytes(bytes(raw))
    paramio.read_manifest(folder)
    with pytest.raises(FormatError, match=f"{name}.*checksum mismatch"):
        paramio.load(folder)
    assert not paramio.validate(folder).ok


def test_an_empty_folder_and_two_indexes(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="without a checkpoint"):
        paramio.load(tmp_path)
    (tmp_path / "a.safetensors.index.json").write_text("{}")
    (tmp_path / "b.safetensors.index.json").write_text("{}")
    with pytest.raises(FormatError, match="2 index files"):
        paramio.load(tmp_path)


def test_a_folder_in_place_of_a_shard(folder: Path) -> None:
    name = "model-00002-of-00003.safetensors"
    (folder / name).unlink()
    (folder / name).mkdir()
    refused(folder, name, "not a regular file")


def test_nothing_outside_the_folder_is_opened(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile index pointing at files outside: no open() of any of them ever happens."""
    outside = folder.parent / "outside.safetensors"
    outside.write_bytes((folder / "model-00001-of-00003.safetensors").read_bytes())
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy(real):  # noqa: ANN001, ANN202
        def opener(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if not isinstance(path, int):
                opened.append(os.path.realpath(path))
            return real(path, *args, **kwargs)
        return opener

    for name in ("../outside.safetensors", str(outside)):
        edit_index(folder, lambda d, n=name: d["weight_map"].update({"embed.weight": n}))
        monkeypatch.setattr(builtins, "open", spy(real_open))
        monkeypatch.setattr(os, "open", spy(real_os_open))
        with pytest.raises(FormatError):
            paramio.load(folder)
        monkeypatch.undo()
        assert str(folder / INDEX) in opened and str(outside) not in opened, opened
