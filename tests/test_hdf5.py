"""HDF5: the conformance suite, what stock h5py sees in paramio files, files h5py wrote, options, and
hostile files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from h5py import h5o

import paramio
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .conformance import FormatConformance, same
from .conftest import untied_lm, untied_mlp


class TestHDF5Conformance(FormatConformance):
    suffix = ".h5"


# -- what stock h5py sees -------------------------------------------------------------------------------------
def test_h5py_lists_every_name_and_aliases_are_hard_links(tmp_path: Path) -> None:
    path = tmp_path / "mlp.h5"
    model = tied_mlp()
    paramio.save(model, path)
    with h5py.File(path, "r") as f:
        tensors = f["tensors"]
        assert list(tensors) == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias",
                                 "4.weight", "4.bias"]  # creation order: stored tensors, then aliases
        assert tensors["4.weight"] == tensors["2.weight"] and tensors["4.bias"] == tensors["2.bias"]
        assert tensors["0.weight"] != tensors["2.weight"]
        assert h5o.get_info(tensors["2.weight"].id).rc == 2  # one object, two links: no copy
        for name, value in model.state_dict().items():
            assert np.array_equal(tensors[name][()], value.numpy()), name
        manifest = paramio.Manifest.from_json(f.attrs["paramio.manifest"])
    assert manifest == paramio.read_manifest(path)


def test_datasets_are_contiguous_aligned_and_untimestamped(tmp_path: Path) -> None:
    path = tmp_path / "lm.h5"
    paramio.save(tiny_lm(), path, metadata={"a": "b"})
    with h5py.File(path, "r") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert datasets
        for ds in datasets:
            assert ds.chunks is None and ds.compression is None
            assert ds.id.get_offset() % 64 == 0  # mappable without a copy
        objects = [f] + [f[name] for name in ("tensors",)] + datasets
        for obj in objects:
            info = h5o.get_info(obj.id)
            assert (info.atime, info.mtime, info.ctime, info.btime) == (0, 0, 0, 0), obj.name


def test_bfloat16_and_float8_are_raw_bits_with_a_dtype_attribute(tmp_path: Path) -> None:
    path = tmp_path / "low.h5"
    values = torch.randn(4, 3)
    tensors = {"bf16": values.bfloat16(), "e4m3": values.to(torch.float8_e4m3fn), "e5m2": values.to(torch.float8_e5m2)}
    paramio.save(tensors, path)
    with h5py.File(path, "r") as f:
        assert f["tensors/bf16"].dtype == np.uint16 and f["tensors/bf16"].attrs["dtype"] == b"bfloat16"
        assert f["tensors/e4m3"].dtype == np.uint8 and f["tensors/e4m3"].attrs["dtype"] == b"float8_e4m3fn"
        assert np.array_equal(f["tensors/bf16"][()], tensors["bf16"].view(torch.uint16).numpy())
    ck = paramio.load(path)
    assert all(same(ck[name], t) for name, t in tensors.items())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.uint16, torch.uint32, torch.uint64],
                         ids=str)
def test_dtypes_beyond_the_shared_matrix(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "more.h5"
    values = (torch.arange(12, dtype=torch.float64).reshape(3, 4) * 1.5 + 7).to(dtype)
    paramio.save({"v": values, "scalar": values[0, 0].clone()}, path)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["tensors/v"][()], values.numpy())  # native HDF5 types, no dtype attribute
        assert "dtype" not in f["tensors/v"].attrs
    ck = paramio.load(path)
    assert same(ck["v"], values) and same(ck["scalar"], values[0, 0])


def test_gradients_live_under_grads(tmp_path: Path) -> None:
    path = tmp_path / "trained.h5"
    model = tied_mlp()
    model(torch.randn(2, 4)).sum().backward()
    paramio.save(model, path, grads=True)
    with h5py.File(path, "r") as f:
        assert set(f["grads"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"}
        assert np.array_equal(f["grads/2.weight"][()], model[2].weight.grad.numpy())
    fresh = untied_mlp()
    report = paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight
    assert torch.equal(fresh[2].weight.grad, model[2].weight.grad)
    assert "2.weight" in report.grads


def test_names_with_slashes_nest_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested.h5"
    shared = torch.arange(6.0)
    paramio.save({"encoder/w": shared, "decoder/w": shared, "top": torch.ones(2)}, path)
    with h5py.File(path, "r") as f:
        assert f["tensors/decoder/w"] == f["tensors/encoder/w"]
    ck = paramio.load(path)
    assert ck["decoder/w"] is ck["encoder/w"] and torch.equal(ck["encoder/w"], shared)


def test_a_name_that_is_also_a_group_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "clash.h5"
    with pytest.raises(FormatError, match="`a` and `a/b`"):
        paramio.save({"a": torch.ones(1), "a/b": torch.ones(1)}, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_20000_tensors_and_a_large_manifest(tmp_path: Path) -> None:
    """The manifest outgrows HDF5's 64 KiB compact attribute limit; dense attribute storage holds it."""
    path = tmp_path / "many.h5"
    tensors = {f"layers.{i}.weight": torch.full((1,), float(i)) for i in range(20_000)}
    tensors["head.weight"] = tensors["layers.7.weight"]
    paramio.save(tensors, path)
    with h5py.File(path, "r") as f:
        assert len(f.attrs["paramio.manifest"]) > 1_000_000
        assert len(f["tensors"]) == 20_001
    manifest = paramio.read_manifest(path)  # also checks every dataset against its entry
    assert len(manifest.tensors) == 20_000
    assert [(g.canonical, g.aliases) for g in manifest.ties] == [("layers.7.weight", ("head.weight",))]


# -- options ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{"compression": "gzip"}, {"compression": "gzip", "compression_opts": 9},
                                     {"compression": "lzf", "shuffle": True}, {"fletcher32": True}], ids=str)
def test_filtered_datasets_round_trip(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "packed.h5"
    model = tiny_lm()
    paramio.save(model, path, **options)
    with h5py.File(path, "r") as f:
        ds = f["tensors/embed.weight"]
        assert ds.chunks is not None
        assert ds.compression == options.get("compression") and ds.fletcher32 == options.get("fletcher32", False)
    fresh = untied_lm()
    paramio.load_into(fresh, path)
    assert fresh.head.weight is fresh.embed.weight
    assert all(same(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_filters_skip_what_hdf5_cannot_chunk(tmp_path: Path) -> None:
    path = tmp_path / "odd.h5"
    tensors = {"scalar": torch.tensor(2.5), "empty": torch.empty(0, 3), "matrix": torch.randn(4, 4).bfloat16()}
    paramio.save(tensors, path, compression="gzip", fletcher32=True)
    with h5py.File(path, "r") as f:
        assert f["tensors/scalar"].chunks is None and f["tensors/empty"].chunks is None
        assert f["tensors/matrix"].compression == "gzip"
    ck = paramio.load(path)
    assert all(same(ck[name], t) for name, t in tensors.items())


def test_fletcher32_catches_corruption_even_without_paramio_checksums(tmp_path: Path) -> None:
    path = tmp_path / "guarded.h5"
    marker = torch.full((256,), 1234.5678, dtype=torch.float64)
    paramio.save({"marker": marker}, path, fletcher32=True, checksum=None)
    data = bytearray(path.read_bytes())
    at = data.find(marker.numpy().tobytes()[:64])
    data[at + 10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="marker"):
        paramio.load(path)


@pytest.mark.parametrize("options", [{"compression": "zstd"}, {"compression": "lzf", "compression_opts": 3},
                                     {"compression": "gzip", "compression_opts": 11}, {"fletcher32": "yes"}],
                         ids=str)
def test_bad_options_are_refused_and_leave_no_file(tmp_path: Path, options: dict) -> None:
    with pytest.raises(FormatError):
        paramio.save(tied_mlp(), tmp_path / "x.h5", **options)
    assert list(tmp_path.iterdir()) == []


def test_options_other_formats_take_are_refused() -> None:
    with pytest.raises(TypeError, match="example_input"):
        paramio.save(tied_mlp(), "never.h5", example_input=1)


# -- files other programs wrote -----------------------------------------------------------------------------
def test_h5py_file_with_a_tensors_group_imports_links_in_listing_order(tmp_path: Path) -> None:
    path = tmp_path / "stock.h5"
    model = tiny_lm()
    state = model.state_dict()
    with h5py.File(path, "w") as f:  # no track_order: h5py lists names alphabetically
        group = f.create_group("tensors")
        for name, value in state.items():
            if name != "head.weight":
                group[name] = value.numpy()
        group["head.weight"] = group["embed.weight"]
        f["not_a_tensor"] = np.ones(3)  # outside /tensors: ignored
    ck = paramio.load(path)
    assert set(ck) == set(state)
    assert ck["head.weight"] is ck["embed.weight"]
    assert [(g.canonical, g.aliases) for g in ck.ties] == [("embed.weight", ("head.weight",))]
    fresh = untied_lm()
    paramio.load_into(fresh, path)
    assert fresh.head.weight is fresh.embed.weight
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)


def test_first_listed_hard_link_is_the_canonical(tmp_path: Path) -> None:
    path = tmp_path / "order.h5"
    with h5py.File(path, "w") as f:
        f["b_first"] = np.arange(3.0)
        f["a_second"] = f["b_first"]  # created later, but listed first (by name)
    manifest = paramio.read_manifest(path)
    assert [t.name for t in manifest.tensors] == ["a_second"]
    assert manifest.ties[0].aliases == ("b_first",)


def test_nested_groups_soft_links_and_foreign_types_import(tmp_path: Path) -> None:
    path = tmp_path / "keras_like.h5"
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["model/dense/kernel"] = weights
        f.create_dataset("model/dense/bias", data=np.arange(3, dtype=">f8"))  # big-endian
        f.create_dataset("model/chunked", data=np.arange(100, dtype=np.int16), chunks=(10,), compression="gzip")
        f["model/alias"] = h5py.SoftLink("/model/dense/kernel")
        f["model/scalar"] = np.float32(2.5)
    ck = paramio.load(path)
    assert np.array_equal(ck["model/dense/kernel"].numpy(), weights)
    assert ck["model/dense/bias"].dtype == torch.float64 and ck["model/dense/bias"].tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(ck["model/chunked"], torch.arange(100, dtype=torch.int16))
    assert ck["model/alias"] is ck["model/dense/kernel"]
    assert ck["model/scalar"].shape == () and ck["model/scalar"].item() == 2.5


def test_loaded_tensors_are_private_to_the_caller(tmp_path: Path) -> None:
    """Reading maps the file copy-on-write: edits to a loaded tensor never reach the file."""
    path = tmp_path / "mlp.h5"
    paramio.save(tied_mlp(), path)
    before = path.read_bytes()
    ck = paramio.load(path)
    ck["2.weight"].add_(1)
    assert ck["4.weight"][0, 0] == ck["2.weight"][0, 0]
    assert path.read_bytes() == before
    assert paramio.validate(path).ok


# -- hostile files ------------------------------------------------------------------------------------------
def _with(tmp_path: Path, build) -> Path:  # noqa: ANN001
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["data"] = np.arange(6, dtype=np.float32)
    (tmp_path / "raw.bin").write_bytes(bytes(64))
    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w") as f:
        f["tensors/ok"] = np.ones(2, dtype=np.float32)
        build(f["tensors"], tmp_path)
    return path


def _external_link(g, d):  # noqa: ANN001, ANN202
    g["x"] = h5py.ExternalLink(str(d / "outside.h5"), "/data")


def _virtual(g, d):  # noqa: ANN001, ANN202
    layout = h5py.VirtualLayout(shape=(6,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(d / "outside.h5"), "data", shape=(6,))
    g.create_virtual_dataset("x", layout)


def _external_storage(g, d):  # noqa: ANN001, ANN202
    g.create_dataset("x", shape=(16,), dtype="f4", external=[(str(d / "raw.bin"), 0, 64)])


@pytest.mark.parametrize(("build", "problem"), [
    (_external_link, "external link"),
    (_virtual, "virtual dataset"),
    (_external_storage, "external files"),
    (lambda g, d: g.create_dataset("x", data=np.array([b"text"])), "strings, compound"),
    (lambda g, d: g.create_dataset("x", data=["text"], dtype=h5py.string_dtype()), "strings, compound"),
    (lambda g, d: g.create_dataset("x", shape=(2,), dtype=[("a", "f4"), ("b", "i4")]), "strings, compound"),
    (lambda g, d: g.create_dataset("x", data=h5py.Empty("f4")), "null dataspace"),
    (lambda g, d: g.create_dataset("x", shape=(2**40,), dtype="f4", chunks=(1024,)), "refusing to allocate"),
    (lambda g, d: g.__setitem__("x", h5py.SoftLink("/nowhere")), "points to nothing"),
    (lambda g, d: g.__setitem__("loop", g), "linked twice"),
    (lambda g, d: g.create_dataset("x", data=np.zeros(2, np.uint16)).attrs.__setitem__("dtype", np.bytes_(b"float128")),
     "does not fit"),
], ids=["external-link", "virtual", "external-storage", "bytes", "vlen-string", "compound", "null", "huge-chunked",
        "dangling-soft-link", "group-cycle", "bad-dtype-attribute"])
def test_hostile_structures_are_refused_with_the_reason(tmp_path: Path, build, problem: str) -> None:  # noqa: ANN001
    path = _with(tmp_path, build)
    with pytest.raises(FormatError, match=problem) as info:
        paramio.read_manifest(path)
    assert str(path) in str(info.value)
    with pytest.raises(FormatError):
        paramio.load(path)


def test_raw_bits_dtype_attribute_must_match_the_width(tmp_path: Path) -> None:
    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as f:
        f["tensors/x"] = np.zeros(3, dtype=np.uint8)
        f["tensors/x"].attrs["dtype"] = np.bytes_(b"bfloat16")  # bfloat16 needs 16 bits
    with pytest.raises(FormatError, match="float8_e4m3fn, float8_e5m2"):
        paramio.load(path)


def test_variable_length_text_attributes_are_refused_unread(tmp_path: Path) -> None:
    """A variable-length string lives in HDF5's global heap; a corrupt heap hangs HDF5's reader (found by
    fuzzing), so paramio writes fixed-length strings and reads no other kind."""
    path = tmp_path / "vlen.h5"
    paramio.save({"x": torch.ones(2)}, path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["paramio.manifest"].decode()
        del f.attrs["paramio.manifest"]
        f.attrs["paramio.manifest"] = text  # h5py stores a str as a variable-length string
    with pytest.raises(FormatError, match="not a fixed-length string"):
        paramio.read_manifest(path)
