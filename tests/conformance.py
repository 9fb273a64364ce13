"""The conformance suite every location passes: subclass :class:`FormatConformance` once per format (set
``suffix``) and once per folder layout (override the capability hooks: ``target``, ``data_files``,
``save_options``, ``dtypes``, ``shards``). Each test is a user's story: build a small model, save, load,
assert identity and values.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
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


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache, so that what a reader then touches shows in :func:`resident`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> int:
    """Bytes of ``path`` in the page cache (mincore(2)): whatever read them, read() or a memory map."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        view = np.frombuffer(mapped, dtype=np.uint8)
        try:
            if _LIBC.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del view
    return sum(v & 1 for v in vector) * mmap.PAGESIZE


_LIBC = ctypes.CDLL(None, use_errno=True)


class FormatConformance:
    """Round trip, ties, dtypes, determinism, manifest-only reads, corrupt files and atomic writes.

    Capability hooks (class attributes and methods a subclass overrides for its location):
    ``suffix`` (a file format's suffix), ``format`` (its name, for the writer the failure test breaks),
    ``dtypes`` (the dtypes it holds exactly; the others must be refused at save), ``shards`` (whether a
    save spreads tensors over several files), ``save_options`` (keyword arguments every save passes),
    ``target`` (where a checkpoint goes) and ``data_files`` (the files a saved checkpoint consists of).
    """

    suffix: str = ""
    format: str | None = None
    dtypes: tuple[torch.dtype, ...] = tuple(DTYPES)
    shards: bool = False
    save_options: dict[str, Any] = {}

    def target(self, folder: Path, stem: str = "checkpoint") -> Path:
        return folder / f"{stem}{self.suffix}"

    def data_files(self, path: Path) -> list[Path]:
        """The files of a saved checkpoint, in a fixed order (a folder layout lists its shards and index)."""
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]

    def save(self, obj: Any, path: Path, **options: Any) -> paramio.Manifest:
        return paramio.save(obj, path, **{**self.save_options, **options})

    def format_class(self) -> Any:
        return for_path(f"x{self.suffix}", self.format)

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return self.target(tmp_path)

    # -- the seed's story ---------------------------------------------------------------------------
    def test_seed_mlp_round_trip_keeps_ties(self, path: Path) -> None:
        model = tied_mlp()
        self.save(model, path)
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
        self.save(model, path)
        fresh = untied_mlp()
        report = paramio.load_into(fresh, path)
        assert fresh[2].weight is fresh[4].weight
        assert fresh[2].bias is fresh[4].bias
        assert len(list(fresh.parameters())) == 6
        assert ("4.weight", "2.weight") in report.retied
        x = torch.randn(5, 4)
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
        # the gradient of the shared weight is the sum over both uses: an untied copy of the same values
        # gives one gradient per use, and the re-tied model's single gradient is their sum
        untied = untied_mlp()
        untied.load_state_dict(model.state_dict())
        untied(x).sum().backward()
        fresh(x).sum().backward()
        assert untied[2].weight is not untied[4].weight
        torch.testing.assert_close(fresh[2].weight.grad, untied[2].weight.grad + untied[4].weight.grad)
        torch.testing.assert_close(fresh[2].bias.grad, untied[2].bias.grad + untied[4].bias.grad)
        assert not torch.equal(fresh[2].weight.grad, untied[2].weight.grad)
        # editing one name edits the other
        with torch.no_grad():
            fresh[4].weight.add_(1)
        torch.testing.assert_close(fresh[2].weight, model[2].weight + 1)

    def test_tied_embedding_lm(self, path: Path) -> None:
        model = tiny_lm()
        self.save(model, path)
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
        self.save(model, path)
        lazy = tied_mlp(initialized=False, seed=1)
        report = paramio.load_into(lazy, path)
        assert "0.weight" in report.materialized
        assert isinstance(lazy[0], nn.Linear) and lazy[0].in_features == 4
        assert lazy[2] is lazy[4]
        x = torch.randn(2, 4)
        torch.testing.assert_close(lazy(x), model(x), rtol=0, atol=0)

    def test_strict_mismatch_lists_every_problem_and_leaves_model_unchanged(self, path: Path) -> None:
        self.save(tied_mlp(), path)
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
        """Every dtype the location holds comes back bit for bit; any other is refused, never converted."""
        tensors = {
            "matrix": sample(dtype, (3, 5)),
            "scalar": sample(dtype, (), seed=1),
            "empty": sample(dtype, (0, 4)),
            "cube": sample(dtype, (2, 3, 4), seed=2),
        }
        if dtype not in self.dtypes:
            with pytest.raises(ParamioError, match=str(dtype).removeprefix("torch.")):
                self.save(tensors, path)
            assert not path.exists()
            return
        self.save(tensors, path)
        ck = paramio.load(path)
        assert set(ck) == set(tensors)
        for name, tensor in tensors.items():
            assert same(ck[name], tensor), name

    def test_float_specials_survive(self, path: Path) -> None:
        t = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.4e38])
        self.save({"t": t, "h": t.to(torch.float16), "b": t.to(torch.bfloat16)}, path)
        ck = paramio.load(path)
        assert same(ck["t"], t) and same(ck["h"], t.to(torch.float16)) and same(ck["b"], t.to(torch.bfloat16))

    def test_metadata_and_gradients_round_trip(self, path: Path) -> None:
        model = tied_mlp()
        model(torch.randn(3, 4)).sum().backward()
        self.save(model, path, grads=True, metadata={"run": "seed-1", "ünï": "cödé ✓"})
        ck = paramio.load(path)
        assert ck.metadata == {"run": "seed-1", "ünï": "cödé ✓"}
        assert set(ck.grads) == {"0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"}
        assert same(ck.grads["2.weight"], model[2].weight.grad)
        assert "grad/2.weight" not in ck

    def test_dtype_cast_on_the_way_out(self, path: Path) -> None:
        model = tiny_lm()
        manifest = self.save(model, path, dtype="bf16")
        ck = paramio.load(path)
        assert ck["embed.weight"].dtype == torch.bfloat16 and ck["head.weight"] is ck["embed.weight"]
        assert ck["causal_mask"].dtype == torch.bool
        assert same(ck["pos"], model.pos.detach().to(torch.bfloat16))
        assert {t.dtype for t in manifest.tensors} == {"bfloat16", "bool"}

    def test_partial_aliases_are_stored_once_as_views(self, path: Path) -> None:
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        self.save({"base": base, "row": base[1], "transposed": base.t(), "copy": base}, path)
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
        first, second = self.target(tmp_path / "a", "m"), self.target(tmp_path / "b", "m")
        self.save(tiny_lm(), first, metadata={"b": "2", "a": "1"})
        self.save(tiny_lm(), second, metadata={"a": "1", "b": "2"})
        files = self.data_files(first)
        assert [p.relative_to(first) for p in files if first.is_dir()] == [
            p.relative_to(second) for p in self.data_files(second) if second.is_dir()]
        assert [p.read_bytes() for p in files] == [p.read_bytes() for p in self.data_files(second)]

    def test_manifest_is_read_without_tensor_data(self, tmp_path: Path) -> None:
        # 64 MiB of tensor data, out of the page cache: reading it (by read() or through a memory map) brings
        # it back, reading the manifest brings back a few pages (and what the kernel reads ahead around them)
        data = {"big": torch.arange(16 << 20, dtype=torch.float32), "small": torch.ones(3)}
        path = self.target(tmp_path)
        written = self.save(data, path, metadata={"k": "v"})
        files = self.data_files(path)
        for file in files:
            evict(file)
        assert sum(resident(f) for f in files) < (1 << 20), "the page cache cannot be emptied here"
        assert paramio.read_manifest(path) == written
        brought = sum(resident(f) for f in files)
        assert brought < (16 << 20), f"read_manifest read {brought} bytes of a 64 MiB checkpoint"
        assert all(t.checksum and t.checksum.startswith("xxh3_64:") for t in written.tensors)
        paramio.load(path)  # the check can fail: a load reads all of it
        assert sum(resident(f) for f in files) > (64 << 20)

    def test_signature_of_file_matches_model(self, path: Path) -> None:
        model = tiny_lm()
        self.save(model, path)
        assert paramio.signature(path) == paramio.signature(model)
        assert paramio.validate(path, against=model).ok
        assert paramio.validate(path).ok

    def test_validate_against_other_model_lists_problems(self, path: Path) -> None:
        self.save(tiny_lm(), path)
        report = paramio.validate(path, against=untied_lm())
        assert not report.ok
        assert any("head.weight" in p for p in report.problems)

    def test_checksums_are_of_each_tensors_bytes_whatever_its_size(self, path: Path) -> None:
        # sizes on each side of where paramio changes how it hashes (in line, deferred to a pool, in a
        # thread beside the write)
        sizes = {"tiny": 3, "mid": (256 << 10) // 4 + 1, "large": (4 << 20) // 4 + 7, "small": 1000}
        tensors = {name: torch.arange(n, dtype=torch.float32) * (i + 1) for i, (name, n) in enumerate(sizes.items())}
        tensors["alias"] = tensors["mid"]
        manifest = self.save(tensors, path)
        expected = {n: "xxh3_64:" + xxhash.xxh3_64_hexdigest(t.numpy().tobytes()) for n, t in tensors.items()}
        assert {t.name: t.checksum for t in manifest.tensors} == {n: expected[n] for n in sizes}
        assert paramio.read_manifest(path).tensors == manifest.tensors
        loaded = paramio.load(path)
        assert loaded["alias"] is loaded["mid"] and all(torch.equal(loaded[n], t) for n, t in tensors.items())

    def test_sha256_checksums_on_request(self, path: Path) -> None:
        manifest = self.save(tied_mlp(), path, checksum="sha256")
        assert all(t.checksum.startswith("sha256:") for t in manifest.tensors)
        assert paramio.validate(path).ok

    # -- bad input --------------------------------------------------------------------------------------
    def test_flipped_bit_in_data_is_caught(self, path: Path) -> None:
        marker = torch.full((64,), 1234.5678, dtype=torch.float64)
        self.save({"marker": marker, "other": torch.ones(3)}, path)
        needle = bytes(marker.numpy().tobytes())
        holder = next((p for p in self.data_files(path) if needle in p.read_bytes()), None)
        assert holder is not None, "tensor bytes are stored uncompressed"
        data = bytearray(holder.read_bytes())
        data[data.find(needle) + 100] ^= 0x01
        holder.write_bytes(bytes(data))
        with pytest.raises(FormatError, match="marker"):
            paramio.load(path)
        report = paramio.validate(path)
        assert not report.ok and any("marker" in p for p in report.problems)
        ck = paramio.load(path, verify=False)
        assert not torch.equal(ck["marker"], marker)

    def test_missing_file(self, tmp_path: Path) -> None:
        missing = self.target(tmp_path, "nope")
        with pytest.raises(FormatError) as info:
            paramio.load(missing)
        assert isinstance(info.value, FileNotFoundError)
        assert str(missing) in str(info.value)

    @pytest.mark.parametrize("keep", [0, 7, 0.5, -1], ids=["empty", "7-bytes", "half", "last-byte-cut"])
    def test_truncated_file_is_a_format_error(self, path: Path, keep: float) -> None:
        self.save(tiny_lm(), path)
        largest = max(self.data_files(path), key=lambda p: p.stat().st_size)
        data = largest.read_bytes()
        cut = int(len(data) * keep) if isinstance(keep, float) else (len(data) - 1 if keep == -1 else keep)
        largest.write_bytes(data[:cut])
        with pytest.raises(ParamioError):
            paramio.load(path)
        with pytest.raises(ParamioError):
            paramio.read_manifest(path)

    def test_random_bytes_are_a_format_error(self, path: Path) -> None:
        self.save(tiny_lm(), path)
        for file in self.data_files(path):
            file.write_bytes(os.urandom(4096))
        with pytest.raises(FormatError, match=str(self.data_files(path)[0].name)):
            paramio.load(path)

    def test_failed_write_leaves_previous_file_untouched(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.save(tied_mlp(), path)
        before = {p: p.read_bytes() for p in self.data_files(path)}
        fmt = self.format_class()
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
            self.save(tiny_lm(), path)
        assert {p: p.read_bytes() for p in self.data_files(path)} == before
        for folder in [path.parent] + ([path] if path.is_dir() else []):  # no temporary left, hidden or not
            assert partial_files(folder) == []
            assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
