"""PyTorch .pt: the conformance suite, stock torch.load on paramio files, checkpoints other programs saved,
and pickles that must never run."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import paramio
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .conformance import FormatConformance, same
from .conftest import untied_lm, untied_mlp


class TestTorchConformance(FormatConformance):
    suffix = ".pt"


# -- what stock torch sees ----------------------------------------------------------------------------------
def test_torch_load_gives_a_state_dict_with_native_sharing(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    model = tied_mlp()
    paramio.save(model, path)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())
    assert state["4.weight"] is state["2.weight"]  # an alias is the very tensor of its canonical
    manifest = paramio.Manifest.from_json(state._metadata["paramio.manifest"])
    assert manifest == paramio.read_manifest(path)
    fresh = untied_mlp()
    assert not fresh.load_state_dict(state).missing_keys
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.uint16, torch.uint32, torch.uint64],
                         ids=str)
def test_dtypes_beyond_the_shared_matrix(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "more.pt"
    values = (torch.arange(12, dtype=torch.float64).reshape(3, 4) * 1.5 + 7).to(dtype)
    paramio.save({"v": values}, path)
    assert same(torch.load(path, weights_only=True)["v"], values)
    assert same(paramio.load(path)["v"], values)


def test_views_stay_views_of_their_base_for_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "views.pt"
    base = torch.arange(12.0).reshape(3, 4)
    paramio.save({"base": base, "row": base[1]}, path)
    state = torch.load(path, weights_only=True)
    state["base"][1, 0] = -1.0
    assert state["row"][0] == -1.0


def test_the_bytes_do_not_depend_on_the_file_name(tmp_path: Path) -> None:
    first, second = tmp_path / "first.pt", tmp_path / "other-name.pth"
    paramio.save(tiny_lm(), first)
    paramio.save(tiny_lm(), second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert {name.split("/")[0] for name in archive.namelist()} == {"archive"}  # no temporary name inside


@pytest.mark.parametrize("finder", ["end of archive", "zipfile"])
def test_checksums_patched_in_after_torch_save_leave_a_sound_archive(tmp_path: Path, finder: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The checksums of a .pt are computed while torch.save writes and put into its data.pkl after: every
    # zip CRC must still hold and stock torch.load must see the real checksums. data.pkl is found from the
    # end of the archive, or by zipfile for a layout that reading does not expect.
    import paramio.formats.torch.zippatch as torch_format

    if finder == "zipfile":
        monkeypatch.setattr(torch_format, "_first_record", lambda fh: None)
    tensors = {f"w{i}": torch.randn(1 << 16) for i in range(6)} | {"small": torch.ones(3)}
    tensors["tied"] = tensors["w0"]
    path = tmp_path / "m.pt"
    manifest = paramio.save(tensors, path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # the data against the central directory's CRCs
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    # torch writes each record's CRC again after its data (a data descriptor), which zipfile does not read
    raw = path.read_bytes()
    name_length, extra_length = int.from_bytes(raw[26:28], "little"), int.from_bytes(raw[28:30], "little")
    end = info.header_offset + 30 + name_length + extra_length + info.file_size
    assert raw[end:end + 4] == b"PK\x07\x08" and int.from_bytes(raw[end + 4:end + 8], "little") == info.CRC
    stock = torch.load(path, weights_only=True)
    assert paramio.Manifest.from_json(stock._metadata["paramio.manifest"]) == manifest
    assert not any(t.checksum.endswith("0" * 16) for t in manifest.tensors)
    assert stock["tied"] is stock["w0"] and paramio.validate(path).ok
    again = tmp_path / "again.pt"
    paramio.save(tensors, again)
    assert again.read_bytes() == path.read_bytes()


def test_data_pkl_is_found_from_the_end_of_a_zip64_archive_too() -> None:
    # torch.save (miniz) ends every archive with ZIP64 records before the classic end record; over 4 GiB
    # the classic record's central directory offset is 0xFFFFFFFF and only the ZIP64 record has it.
    from paramio.formats.torch.zippatch import _first_record

    buffer = io.BytesIO()
    torch.save({"a": torch.ones(3)}, buffer)
    plain = buffer.getvalue()
    assert plain[-42:-38] == b"PK\x06\x07", "a ZIP64 locator before the end record"
    expected = _first_record(io.BytesIO(plain))
    assert expected is not None and expected.local == 0
    zip64 = plain[:-6] + b"\xff\xff\xff\xff" + plain[-2:]
    assert zipfile.ZipFile(io.BytesIO(zip64)).testzip() is None  # a sound archive
    assert _first_record(io.BytesIO(zip64)) == expected
    assert _first_record(io.BytesIO(plain + b"a comment-like tail")) is None  # another layout: zipfile's turn


def test_slices_of_a_larger_storage_are_saved_alone(tmp_path: Path) -> None:
    """A parameter that is a slice of a big buffer must not drag the whole buffer into the file."""
    path = tmp_path / "slice.pt"
    big = torch.zeros(1_000_000)
    paramio.save({"small": big[10:20]}, path)
    assert path.stat().st_size < 100_000
    assert same(paramio.load(path)["small"], big[10:20])


# -- checkpoints other programs saved -----------------------------------------------------------------------
def test_stock_state_dict_with_a_tied_head_imports_with_its_tie(tmp_path: Path) -> None:
    path = tmp_path / "stock.pt"
    model = tiny_lm()
    torch.save(model.state_dict(), path)
    ck = paramio.load(path)
    assert ck["head.weight"] is ck["embed.weight"]
    assert ck.manifest.producer.name == "torch"
    fresh = untied_lm()
    paramio.load_into(fresh, path)
    assert fresh.head.weight is fresh.embed.weight
    tokens = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_training_checkpoints_import_their_weights_and_list_what_they_skip(tmp_path: Path, key: str) -> None:
    path = tmp_path / "train.pt"
    model = tied_mlp()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    torch.save({key: model.state_dict(), "epoch": 3, "optimizer": optimizer.state_dict()}, path)
    ck = paramio.load(path)
    assert ck["4.weight"] is ck["2.weight"]
    assert set(ck) == set(model.state_dict())
    assert json.loads(ck.metadata["paramio.skipped"]) == ["epoch", "optimizer"]
    fresh = untied_mlp()
    paramio.load_into(fresh, path)
    assert fresh[2].weight is fresh[4].weight


def test_nested_dicts_flatten_to_dotted_names(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    shared = torch.randn(3)
    torch.save({"encoder": {"w": shared, "layers": {0: {"b": torch.ones(2)}}, "note": "hi"}, "decoder": {"w": shared}},
               path)
    ck = paramio.load(path)
    assert list(ck) == ["encoder.w", "encoder.layers.0.b", "decoder.w"]
    assert ck["decoder.w"] is ck["encoder.w"]
    assert json.loads(ck.metadata["paramio.skipped"]) == ["encoder.note"]


def test_legacy_non_zip_files_import(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    model = tied_mlp()
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    ck = paramio.load(path)
    assert ck["4.weight"] is ck["2.weight"]
    assert all(same(ck[k], v) for k, v in model.state_dict().items())


def test_stock_partial_aliases_are_refused_with_their_names(tmp_path: Path) -> None:
    path = tmp_path / "views.pt"
    base = torch.arange(12.0).reshape(3, 4)
    torch.save({"base": base, "row": base[1]}, path)
    with pytest.raises(FormatError, match="`row` \\(a view of `base`\\)"):
        paramio.load(path)


def test_loaded_tensors_are_private_to_the_caller(tmp_path: Path) -> None:
    """Zip files are memory-mapped copy-on-write: edits to a loaded tensor never reach the file."""
    path = tmp_path / "mlp.pt"
    paramio.save(tied_mlp(), path)
    before = path.read_bytes()
    ck = paramio.load(path)
    ck["2.weight"].add_(1)
    assert ck["4.weight"][0, 0] == ck["2.weight"][0, 0]
    assert path.read_bytes() == before


# -- pickles that must never run ----------------------------------------------------------------------------
class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    zipped, legacy, plain = tmp_path / "zip.pt", tmp_path / "legacy.pt", tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2), "x": _Marker(marker)}, zipped)
    torch.save({"w": torch.ones(2), "x": _Marker(marker)}, legacy, _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps({"x": _Marker(marker)}))
    for path, problem in ((zipped, "never runs code"), (legacy, "never runs code"),
                          (plain, "neither a zip archive nor a legacy torch.save pickle")):
        with pytest.raises(FormatError, match=problem) as info:
            paramio.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(("content", "problem"), [
    (lambda: [torch.ones(2)], "holds a list"),
    (lambda: torch.ones(2), "holds a Tensor"),
    (lambda: {"s": torch.ones(2).to_sparse()}, "sparse_coo"),
    (lambda: {"c": torch.ones(2, dtype=torch.complex32)}, "complex32"),
    (lambda: {"a": {"b": torch.ones(1)}, "a.b": torch.ones(1)}, "two entries flatten to the name `a.b`"),
    (lambda: {"w": torch.ones(1), "": torch.ones(1)}, "a name has 1 to 4096 characters"),
], ids=["list", "tensor", "sparse", "complex32", "name-clash", "empty-name"])
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_content_paramio_cannot_represent_is_refused(tmp_path: Path, content, problem: str) -> None:  # noqa: ANN001
    path = tmp_path / "odd.pt"
    torch.save(content(), path)
    with pytest.raises(FormatError, match=problem):
        paramio.load(path)


def test_legacy_file_claiming_huge_storage_is_refused_before_allocating(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    numel = b"K\x03N"  # BININT1 3 (the storage's element count), NONE (no view), in the storage's id
    assert data.count(numel) == 1
    path = tmp_path / "huge.pt"
    path.write_bytes(data.replace(numel, b"J\xff\xff\xff\x7fN"))  # BININT 2**31 - 1 floats: 8 GiB
    with pytest.raises(FormatError, match="claim 8589934588 bytes"):
        paramio.load(path)


def test_zip_record_cut_short_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    paramio.save({"w": torch.randn(1000)}, path)
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, body in members:
            archive.writestr(info, body[: len(body) // 2] if info.filename.endswith("data/0") else body)
    with pytest.raises(FormatError, match=os.path.basename(path)):
        paramio.load(path)


@pytest.mark.parametrize("writer", ["paramio", "torch.save"])
def test_tensors_read_at_their_record_offsets_match_whatever_the_records(tmp_path: Path, writer: str) -> None:
    """.pt tensors are read with pread at their zip record's offset; an empty tensor's record (no storage to
    locate), equal-size records and a single storage must not shift which bytes a tensor gets."""
    cases = [
        {"00": torch.zeros(0), "01": torch.arange(3.0)},
        {"only": torch.arange(4.0)},
        {f"t{i}": torch.full((4,), float(i)) for i in range(6)},
        {"a": torch.zeros(0, dtype=torch.int8), "b": torch.ones(2, dtype=torch.bool), "c": torch.arange(5)},
    ]
    for i, state in enumerate(cases):
        path = tmp_path / f"m{i}.pt"
        if writer == "paramio":
            paramio.save(state, path)
        else:
            torch.save(state, path)
        ck = paramio.load(path)
        assert set(ck) == set(state)
        assert all(torch.equal(ck[k], v) and ck[k].dtype == v.dtype for k, v in state.items()), state
