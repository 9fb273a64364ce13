"""The conformance suite every format passes: subclass :class:`FormatConformance` once per format and
set ``suffix``. Each test is a user's story: build a small model, save, load, assert identity and values.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import xxhash
from torch import nn

import paramio
from paramio.errors import FormatError, ParamioError
from paramio.examples import tied_mlp, tiny_lm
from paramio.formats.registry import for_path

from .conftest import untied_lm, untied_mlp

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=torch.int64).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal: dtype, shape and bits (NaNs compare equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


class FormatConformance:
    """Round trip, ties, dtypes, determinism, manifest-only reads, corrupt files and atomic writes."""

    suffix: str = ""

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / f"checkpoint{self.suffix}"

    # -- the seed's story ---------------------------------------------------------------------------
    def test_seed_mlp_round_trip_keeps_ties(self, path: Path) -> None:
        model = tied_mlp()
        paramio.save(model, path)
        ck = paramio.load(path)
        assert list(ck.keys()).count("4.weight") == 1
        assert ck["4.weight"] is ck["2.weight"]
        assert ck["4.bias"] is ck["2.bias"]
        assert ck["0.weight"] is not ck["2.weight"]
        for name, tensor in model.state_dict().items():
            assert same(ck[name], tensor), name
        assert [(g.canonical, g.aliases) for g in ck.ties] == [("2.weight", ("4.weight",)), ("2.bias", ("4.bias",))]

    def test_load_into_untied_copy_restores_identity_and_gradients(self, path: Path) -> None:
        model = tied_mlp()
        paramio.save(model, path)
        fresh = untied_mlp()
        report = paramio.load_into(fresh, path)
        assert fresh[2].weight is fresh[4].weight
        assert fresh[2].bias is fresh[4].bias
        assert len(list(fresh.parameters())) == 6
        assert ("4.weight", "2.weight") in report.retied
        x = torch.randn(5, 4)
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
        model(x).sum().backward()
        fresh(x).sum().backward()
        torch.testing.assert_close(fresh[2].weight.grad, model[2].weight.grad)
        # the gradient of the shared weight is the sum over both uses: editing one name edits the other
        with torch.no_grad():
            fresh[4].weight.add_(1)
        torch.testing.assert_close(fresh[2].weight, model[2].weight + 1)

    def test_tied_embedding_lm(self, path: Path) -> None:
        model = tiny_lm()
        paramio.save(model, path)
        manifest = paramio.read_manifest(path)
        assert [(g.canonical, g.aliases) for g in manifest.ties] == [("embed.weight", ("head.weight",))]
        assert "head.weight" not in [t.name for t in manifest.tensors]
        fresh = untied_lm()
        paramio.load_into(fresh, path)
        assert fresh.head.weight is fresh.embed.weight
        tokens = torch.randint(0, 32, (3, 8))
        torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)
        assert torch.equal(fresh.causal_mask, model.causal_mask)

    def test_lazy_model_is_materialized_without_forward(self, path: Path) -> None:
        model = tied_mlp()
        paramio.save(model, path)
        lazy = tied_mlp(initialized=False, seed=1)
        report = paramio.load_into(lazy, path)
        assert "0.weight" in report.materialized
        assert isinstance(lazy[0], nn.Linear) and lazy[0].in_features == 4
        assert lazy[2] is lazy[4]
        x = torch.randn(2, 4)
        torch.testing.assert_close(lazy(x), model(x), rtol=0, atol=0)

    def test_strict_mismatch_lists_every_problem_and_leaves_model_unchanged(self, path: Path) -> None:
        paramio.save(tied_mlp(), path)
        wrong = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                              nn.Linear(8, 3), nn.Linear(1, 1))
        before = {k: v.clone() for k, v in wrong.state_dict().items()}
        with pytest.raises(paramio.errors.ValidationError) as info:
            paramio.load_into(wrong, path)
        text = "\n".join(info.value.problems)
        assert "6.weight" in text and "6.bias" in text and "7.weight" in text and "7.bias" in text
        assert len(info.value.problems) >= 4
        assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
        assert wrong[2].weight is not wrong[4].weight

    # -- values -----------------------------------------------------------------------------------------
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_dtype_matrix_round_trips_exactly(self, path: Path, dtype: torch.dtype) -> None:
        tensors = {
            "matrix": sample(dtype, (3, 5)),
            "scalar": sample(dtype, (), seed=1),
            "empty": sample(dtype, (0, 4)),
            "cube": sample(dtype, (2, 3, 4), seed=2),
        }
        paramio.save(tensors, path)
        ck = paramio.load(path)
        assert set(ck) == set(tensors)
        for name, tensor in tensors.items():
            assert same(ck[name], tensor), name

    def test_float_specials_survive(self, path: Path) -> None:
        t = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.4e38])
        paramio.save({"t": t, "h": t.to(torch.float16), "b": t.to(torch.bfloat16)}, path)
        ck = paramio.load(path)
        assert same(ck["t"], t) and same(ck["h"], t.to(torch.float16)) and same(ck["b"], t.to(torch.bfloat16))

    def test_metadata_and_gradients_round_trip(self, path: Path) -> None:
        model = tied_mlp()
        model(torch.randn(3, 4)).sum().backward()
        paramio.save(model, path, grads=True, metadata={"run": "seed-1", "ünï": "cödé ✓"})
        ck = paramio.load(path)
        assert ck.metadata == {"run": "seed-1", "ünï": "cödé ✓"}
        assert set(ck.grads) == {"0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"}
        assert same(ck.grads["2.weight"], model[2].weight.grad)
        assert "grad/2.weight" not in ck

    def test_dtype_cast_on_the_way_out(self, path: Path) -> None:
        model = tiny_lm()
        manifest = paramio.save(model, path, dtype="bf16")
        ck = paramio.load(path)
        assert ck["embed.weight"].dtype == torch.bfloat16 and ck["head.weight"] is ck["embed.weight"]
        assert ck["causal_mask"].dtype == torch.bool
        assert same(ck["pos"], model.pos.detach().to(torch.bfloat16))
        assert {t.dtype for t in manifest.tensors} == {"bfloat16", "bool"}

    def test_partial_aliases_are_stored_once_as_views(self, path: Path) -> None:
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        paramio.save({"base": base, "row": base[1], "transposed": base.t(), "copy": base}, path)
        ck = paramio.load(path)
        assert [t.name for t in ck.manifest.tensors] == ["base"]
        assert same(ck["row"], base[1]) and torch.equal(ck["transposed"], base.t())
        assert ck["copy"] is ck["base"]
        ck["base"][1, 0] = 100.0  # views share memory with their base, as in the original
        assert ck["row"][0] == 100.0 and ck["transposed"][0, 1] == 100.0

    # -- file properties --------------------------------------------------------------------------------
    def test_same_input_gives_identical_bytes(self, tmp_path: Path) -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first, second = tmp_path / "a" / f"m{self.suffix}", tmp_path / "b" / f"m{self.suffix}"
        paramio.save(tiny_lm(), first, metadata={"b": "2", "a": "1"})
        paramio.save(tiny_lm(), second, metadata={"a": "1", "b": "2"})
        assert first.read_bytes() == second.read_bytes()

    def test_manifest_is_read_without_tensor_data(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        written = paramio.save(tiny_lm(), path, metadata={"k": "v"})
        reader_cls = type(for_path(path).reader(path))

        def no_data(self, name):  # noqa: ANN001
            raise AssertionError(f"read_manifest read tensor {name}")

        monkeypatch.setattr(reader_cls, "read", no_data)
        assert paramio.read_manifest(path) == written
        assert all(t.checksum and t.checksum.startswith("xxh3_64:") for t in written.tensors)

    def test_signature_of_file_matches_model(self, path: Path) -> None:
        model = tiny_lm()
        paramio.save(model, path)
        assert paramio.signature(path) == paramio.signature(model)
        assert paramio.validate(path, against=model).ok
        assert paramio.validate(path).ok

    def test_validate_against_other_model_lists_problems(self, path: Path) -> None:
        paramio.save(tiny_lm(), path)
        report = paramio.validate(path, against=untied_lm())
        assert not report.ok
        assert any("head.weight" in p for p in report.problems)

    def test_checksums_are_of_each_tensors_bytes_whatever_its_size(self, path: Path) -> None:
        # sizes on each side of where paramio changes how it hashes (in line, deferred to a pool, in a
        # thread beside the write)
        sizes = {"tiny": 3, "mid": (256 << 10) // 4 + 1, "large": (4 << 20) // 4 + 7, "small": 1000}
        tensors = {name: torch.arange(n, dtype=torch.float32) * (i + 1) for i, (name, n) in enumerate(sizes.items())}
        tensors["alias"] = tensors["mid"]
        manifest = paramio.save(tensors, path)
        expected = {n: "xxh3_64:" + xxhash.xxh3_64_hexdigest(t.numpy().tobytes()) for n, t in tensors.items()}
        assert {t.name: t.checksum for t in manifest.tensors} == {n: expected[n] for n in sizes}
        assert paramio.read_manifest(path).tensors == manifest.tensors
        loaded = paramio.load(path)
        assert loaded["alias"] is loaded["mid"] and all(torch.equal(loaded[n], t) for n, t in tensors.items())

    def test_sha256_checksums_on_request(self, path: Path) -> None:
        manifest = paramio.save(tied_mlp(), path, checksum="sha256")
        assert all(t.checksum.startswith("sha256:") for t in manifest.tensors)
        assert paramio.validate(path).ok

    # -- bad input --------------------------------------------------------------------------------------
    def test_flipped_bit_in_data_is_caught(self, path: Path) -> None:
        marker = torch.full((64,), 1234.5678, dtype=torch.float64)
        paramio.save({"marker": marker, "other": torch.ones(3)}, path)
        data = bytearray(path.read_bytes())
        at = data.find(bytes(marker.numpy().tobytes()))
        assert at >= 0, "tensor bytes are stored uncompressed"
        data[at + 100] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(FormatError, match="marker"):
            paramio.load(path)
        report = paramio.validate(path)
        assert not report.ok and any("marker" in p for p in report.problems)
        ck = paramio.load(path, verify=False)
        assert not torch.equal(ck["marker"], marker)

    def test_missing_file(self, tmp_path: Path) -> None:
        missing = tmp_path / f"nope{self.suffix}"
        with pytest.raises(FormatError) as info:
            paramio.load(missing)
        assert isinstance(info.value, FileNotFoundError)
        assert str(missing) in str(info.value)

    @pytest.mark.parametrize("keep", [0, 7, 0.5, -1], ids=["empty", "7-bytes", "half", "last-byte-cut"])
    def test_truncated_file_is_a_format_error(self, path: Path, keep: float) -> None:
        paramio.save(tiny_lm(), path)
        data = path.read_bytes()
        cut = int(len(data) * keep) if isinstance(keep, float) else (len(data) - 1 if keep == -1 else keep)
        path.write_bytes(data[:cut])
        with pytest.raises(ParamioError):
            paramio.load(path)
        with pytest.raises(ParamioError):
            paramio.read_manifest(path)

    def test_random_bytes_are_a_format_error(self, path: Path) -> None:
        path.write_bytes(os.urandom(4096))
        with pytest.raises(FormatError, match=str(path.name)):
            paramio.load(path)

    def test_failed_write_leaves_previous_file_untouched(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        paramio.save(tied_mlp(), path)
        before = path.read_bytes()
        fmt = for_path(path)
        real_writer = fmt.writer

        def failing_writer(*args, **kwargs):  # noqa: ANN002, ANN003
            writer = real_writer(*args, **kwargs)
            calls = {"n": 0}
            real_write = writer.write_tensor

            def write_tensor(entry, tensor):  # noqa: ANN001
                calls["n"] += 1
                if calls["n"] == 3:
                    raise OSError(28, "No space left on device")
                real_write(entry, tensor)

            writer.write_tensor = write_tensor
            return writer

        monkeypatch.setattr(fmt, "writer", failing_writer)
        with pytest.raises(FormatError, match="No space left"):
            paramio.save(tiny_lm(), path)
        assert path.read_bytes() == before
        assert partial_files(path.parent) == []
        assert sorted(p.name for p in path.parent.iterdir()) == sorted(
            p.name for p in path.parent.iterdir() if not p.name.startswith(".")
        )
