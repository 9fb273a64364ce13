"""safetensors: the conformance suite, stock interop, and hostile headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
from safetensors import safe_open

import paramio
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .conformance import FormatConformance
from .conftest import untied_lm, untied_mlp


class TestSafetensorsConformance(FormatConformance):
    suffix = ".safetensors"


def test_stock_safetensors_opens_paramio_files(tmp_path: Path) -> None:
    path = tmp_path / "lm.safetensors"
    model = tiny_lm()
    paramio.save(model, path)
    stock = st.load_file(path)
    assert "head.weight" not in stock  # aliases are not stored twice
    assert torch.equal(stock["embed.weight"], model.embed.weight)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["head.weight"] == "embed.weight"
    assert json.loads(meta["paramio.manifest"])["schema_version"] == "paramio.manifest/1"
    # stock load_model re-ties an untied twin from the alias metadata paramio writes
    fresh = untied_lm()
    fresh.head.weight = fresh.embed.weight
    missing, unexpected = st.load_model(fresh, path)
    assert not unexpected
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_stock_save_file_imports_without_ties(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    st.save_file({"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.int32)}, path, metadata={"note": "hi"})
    ck = paramio.load(path)
    assert torch.equal(ck["a"], torch.ones(2)) and ck["b"].dtype == torch.int32
    assert ck.ties == () and ck.metadata == {"note": "hi"}
    assert ck.manifest.producer.name == "safetensors"


def test_stock_save_model_imports_with_its_ties(tmp_path: Path) -> None:
    path = tmp_path / "stock.safetensors"
    model = tied_mlp()
    st.save_model(model, path)
    ck = paramio.load(path)
    stored = [t.name for t in ck.manifest.tensors]
    assert len(stored) == 6
    group = next(g for g in ck.ties if "2.weight" in g.names)
    assert set(group.names) == {"2.weight", "4.weight"}
    assert ck["2.weight"] is ck["4.weight"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight


# -- hostile headers: each checked before anything is allocated --------------------------------------------
def _raw(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


@pytest.mark.parametrize(
    "name, blob, message",
    [
        ("tiny", b"\x01\x02", "shorter than"),
        ("length-past-end", _raw({}, length=1 << 20), "past the end"),
        ("length-over-cap", _raw({}, length=1 << 40), "exceeds the cap"),
        ("not-json", struct.pack("<Q", 4) + b"\xff\xfe{[", "not UTF-8 JSON"),
        ("not-object", _raw([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
        ("unknown-dtype", _raw({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16), "unknown dtype"),
        ("shape-length", _raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes"),
        ("negative-dim", _raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
        ("offset-past-end", _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "past the end"),
        ("huge-tensor", _raw({"a": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}}), "past the end"),
        ("overlap", _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlapping"),
        ("hole", _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "holes"),
        ("trailing-bytes", _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9), "cover 4"),
        ("bad-metadata", _raw({"__metadata__": {"k": 1}}), "strings to strings"),
        ("lying-manifest", _raw({"__metadata__": {"paramio.manifest": "{\"schema_version\": 7}"}}), "invalid paramio manifest"),
        ("deep-json", struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "not UTF-8 JSON"),
    ],
)
def test_hostile_header_is_a_format_error(tmp_path: Path, name: str, blob: bytes, message: str) -> None:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(blob)
    with pytest.raises(FormatError, match=message) as info:
        paramio.load(path)
    assert str(path) in str(info.value)


def test_manifest_that_disagrees_with_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    paramio.save({"a": torch.ones(2)}, path)
    manifest = paramio.read_manifest(path)
    lie = manifest.model_copy(update={"tensors": (manifest.tensors[0].model_copy(update={"shape": (3,)}),)})
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    meta["paramio.manifest"] = lie.to_json()
    st.save_file({"a": torch.ones(2)}, path, metadata=meta)
    with pytest.raises(FormatError, match="disagree"):
        paramio.load(path)
    assert not paramio.validate(path).ok


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="unknown suffix"):
        paramio.save({"a": torch.ones(1)}, tmp_path / "x.npz")
    with pytest.raises(FormatError, match="unknown suffix"):
        paramio.load(tmp_path / "x.npz")
