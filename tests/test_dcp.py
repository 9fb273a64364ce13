"""DCP folders from stock ``torch.distributed.checkpoint.save``, read by paramio (one process here; the
multi-rank stories are in test_dcp_distributed.py): every verb, every dtype, ties restored from equal
copies and never invented, and a hostile ``.metadata`` or data file refused without running anything."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import paramio
from paramio.errors import FormatError, ValidationError
from paramio.examples import tiny_lm

from .conformance import DTYPES, same, sample
from .conftest import untied_lm


def stock_save(state: dict, folder: Path) -> Path:
    """What a training script does: ``dcp.save`` in a single process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder))
    return folder


@pytest.fixture
def lm_ckpt(tmp_path: Path) -> Path:
    state = tiny_lm().state_dict()
    state["step"] = 7  # a non-tensor entry, as training loops save
    return stock_save(state, tmp_path / "ckpt")


def test_stock_folder_loads_every_tensor_and_lists_the_rest_as_skipped(lm_ckpt: Path) -> None:
    ck = paramio.load(lm_ckpt)
    reference = tiny_lm().state_dict()
    assert set(ck) == set(reference)
    for name, tensor in reference.items():
        assert same(ck[name], tensor), name
    manifest = paramio.read_manifest(lm_ckpt)
    assert manifest.metadata["paramio.skipped"] == '["step"]'
    assert paramio.validate(lm_ckpt).ok
    assert paramio.read_manifest(lm_ckpt / ".metadata") == manifest  # the folder or its metadata file


def test_no_tie_is_invented_from_equal_copies(lm_ckpt: Path) -> None:
    ck = paramio.load(lm_ckpt)
    assert paramio.read_manifest(lm_ckpt).ties == ()
    assert ck["head.weight"] is not ck["embed.weight"]  # stock DCP stored two copies; paramio says so
    assert torch.equal(ck["head.weight"], ck["embed.weight"])


def test_load_into_restores_the_models_tie_from_equal_copies(lm_ckpt: Path) -> None:
    model = tiny_lm(seed=3)
    report = paramio.load_into(model, lm_ckpt)
    assert ("head.weight", "embed.weight") in report.retied
    assert model.head.weight is model.embed.weight
    tokens = torch.arange(8).view(1, 8)
    assert torch.equal(model(tokens), tiny_lm()(tokens))
    model(tokens).sum().backward()  # one Parameter: the gradient is the sum of both uses
    assert model.embed.weight.grad is model.head.weight.grad


def test_audit_lists_the_stored_copies_as_restorable(lm_ckpt: Path) -> None:
    audit = paramio.audit(lm_ckpt, against=tiny_lm())
    assert audit.restorable == (("embed.weight", "head.weight"),) and not audit.mismatched
    assert paramio.validate(lm_ckpt, against=tiny_lm()).ok
    assert paramio.stats(lm_ckpt).tensors["head.weight"].l2_norm == pytest.approx(
        float(tiny_lm().embed.weight.norm()))


def test_load_into_reports_a_tie_broken_during_training(tmp_path: Path) -> None:
    state = tiny_lm().state_dict()
    state["head.weight"] = state["head.weight"] + 1  # the two copies drifted apart
    folder = stock_save(state, tmp_path / "ckpt")
    model = tiny_lm(seed=3)
    before = model.embed.weight.detach().clone()
    with pytest.raises(ValidationError, match="different values"):
        paramio.load_into(model, folder)
    assert torch.equal(model.embed.weight, before)


def test_untied_model_loads_both_copies(lm_ckpt: Path) -> None:
    model = untied_lm()
    report = paramio.load_into(model, lm_ckpt)
    assert report.ok and model.head.weight is not model.embed.weight
    assert torch.equal(model.head.weight, tiny_lm().embed.weight)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.uint16, torch.uint32, torch.uint64, torch.complex64], ids=str)
def test_every_dtype_is_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        tensor = torch.arange(12, dtype=torch.int64).to(dtype).view(3, 4)
    elif dtype.is_complex:
        tensor = torch.randn(3, 4, dtype=dtype)
    else:
        tensor = sample(dtype, (3, 4))
    folder = stock_save({"t": tensor, "scalar": tensor.reshape(-1)[0].clone()}, tmp_path / "ckpt")
    ck = paramio.load(folder)
    assert same(ck["t"], tensor)
    assert same(ck["scalar"], tensor.reshape(-1)[0])


def test_only_the_chunks_byte_ranges_are_read(lm_ckpt: Path) -> None:
    """Bytes outside every chunk's range (here 4 KiB of junk before them) are never read."""
    data = lm_ckpt / "__0_0.distcp"
    data.write_bytes(os.urandom(4096) + data.read_bytes())

    def shift(md):  # noqa: ANN001, ANN202
        for info in md.storage_data.values():
            info.offset += 4096

    _rewrite(lm_ckpt, shift)
    ck = paramio.load(lm_ckpt)
    assert all(same(ck[k], v) for k, v in tiny_lm().state_dict().items())


def test_convert_to_safetensors_and_back_into_a_model(lm_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    paramio.convert(lm_ckpt, out)
    assert paramio.diff(lm_ckpt, out).equal
    model = tiny_lm(seed=4)
    paramio.load_into(model, out)
    assert model.head.weight is model.embed.weight
    assert paramio.signature(lm_ckpt).tensors == paramio.signature(out).tensors


# -- hostile folders --------------------------------------------------------------------------------------
class _Marker:
    """A pickled object whose unpickling would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _rewrite(folder: Path, change) -> None:
    """Load our own trusted ``.metadata`` with stock pickle, change it, write it back."""
    path = folder / ".metadata"
    with open(path, "rb") as fh:
        md = pickle.load(fh)
    md = change(md) or md
    with open(path, "wb") as fh:
        pickle.dump(md, fh)


def _storage(md, fqn: str):
    return next(k for k in md.storage_data if k.fqn == fqn)


def test_metadata_that_would_run_code_runs_nothing(lm_ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def evil(md):
        md.planner_data = {"x": _Marker(marker)}

    _rewrite(lm_ckpt, evil)
    verbs = [paramio.load, paramio.read_manifest, paramio.signature, paramio.validate,
             lambda p: paramio.diff(p, p), lambda p: paramio.convert(p, tmp_path / "out.safetensors"),
             lambda p: paramio.load_into(tiny_lm(), p)]
    for verb in verbs:
        with pytest.raises(FormatError, match=r"\.metadata.*refuses `builtins\.exec`"):
            verb(lm_ckpt)
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()
    with open(lm_ckpt / ".metadata", "rb") as fh:  # what stock DCP's plain pickle.load does with it
        pickle.load(fh)
    assert marker.exists()


def _past_the_file(md):
    info = md.storage_data[_storage(md, "pos")]
    info.offset = 10**6


def _overlapping(md):
    entry = md.state_dict_metadata["embed.weight"]
    first = entry.chunks[0]
    half = type(first)(offsets=torch.Size([0, 0]), sizes=torch.Size([16, 16]))
    entry.chunks = [first, half]


def _escaping(name: str):
    def change(md):
        md.storage_data[_storage(md, "pos")].relative_path = name
    return change


def _huge(md):
    entry = md.state_dict_metadata["pos"]
    entry.size = torch.Size([2**20, 2**20])  # 4 TiB of float32
    entry.chunks[0].sizes = entry.size


def _missing_chunk(md):
    md.state_dict_metadata["pos"].size = torch.Size([16, 16])


def _unknown_dtype(md):
    md.state_dict_metadata["pos"].properties.dtype = torch.quint8


def _not_a_record(md):
    info = md.storage_data[_storage(md, "pos")]
    info.offset, info.length = info.offset + 100, info.length - 100


@pytest.mark.parametrize(("change", "message"), [
    (_past_the_file, r"pos.*claims bytes .* holds \d+ bytes"),
    (_overlapping, r"embed\.weight.*overlap"),
    (_escaping("../outside.distcp"), "leaves the checkpoint folder"),
    (_escaping("/etc/passwd"), "leaves the checkpoint folder"),
    (_escaping("nothere.distcp"), "`nothere.distcp`.*missing"),
    (_huge, r"pos.*needs \d+ bytes"),
    (_missing_chunk, "chunks missing"),
    (_unknown_dtype, "quint8 has no exact paramio dtype"),
    (_not_a_record, r"__0_0\.distcp: chunk of `pos`.*not a torch\.save record"),
], ids=["offset-past-file", "overlap", "dotdot", "absolute", "missing-file", "1tb", "missing-chunk",
        "dtype", "not-a-record"])
def test_lying_metadata_is_a_format_error_naming_the_file(lm_ckpt: Path, change, message: str) -> None:
    _rewrite(lm_ckpt, change)
    with pytest.raises(FormatError, match=message):
        paramio.load(lm_ckpt)


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_truncated_metadata(lm_ckpt: Path, keep: float) -> None:
    path = lm_ckpt / ".metadata"
    data = path.read_bytes()
    path.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
    with pytest.raises(FormatError, match=r"\.metadata"):
        paramio.read_manifest(lm_ckpt)


def test_truncated_data_file(lm_ckpt: Path) -> None:
    data = lm_ckpt / "__0_0.distcp"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(FormatError, match=r"__0_0\.distcp"):
        paramio.load(lm_ckpt)


def test_a_data_file_the_metadata_does_not_name_is_a_validate_problem(lm_ckpt: Path) -> None:
    (lm_ckpt / "__1_0.distcp").write_bytes(b"left by a killed save")
    assert paramio.load(lm_ckpt)["pos"].shape == (8, 16)
    report = paramio.validate(lm_ckpt)
    assert not report.ok and any("__1_0.distcp" in p and "does not name" in p for p in report.problems)


def test_a_folder_of_safetensors_serialized_chunks_is_refused_naming_it(tmp_path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    writer = FileSystemWriter(tmp_path / "ckpt", serialization_format=SerializationFormat.SAFETENSORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"a": torch.ones(3)}, storage_writer=writer)
    with pytest.raises(FormatError, match=r"__0_0\.distcp: chunk of `a`.*not a torch\.save record"):
        paramio.load(tmp_path / "ckpt")


def test_a_folder_without_metadata_is_refused(tmp_path: Path) -> None:
    (tmp_path / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(FormatError, match="folder"):
        paramio.load(tmp_path)


# -- paramio writing DCP folders --------------------------------------------------------------------------
def test_save_as_dcp_stores_the_tie_once_and_stock_dcp_reads_both_names(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    model = tiny_lm()
    folder = tmp_path / "ckpt"
    manifest = paramio.save(model, folder, format="dcp")
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp"]
    assert [(g.canonical, g.aliases) for g in manifest.ties] == [("embed.weight", ("head.weight",))]
    ck = paramio.load(folder)
    assert ck["head.weight"] is ck["embed.weight"]
    assert paramio.read_manifest(folder) == manifest and all(t.checksum for t in manifest.tensors)

    stock = stock_save(model.state_dict(), tmp_path / "stock")
    assert (folder / "__0_0.distcp").stat().st_size <= (stock / "__0_0.distcp").stat().st_size - model.embed.weight.nbytes

    state = {k: torch.zeros_like(v) for k, v in tiny_lm(seed=1).state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(folder))
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    dcp_to_torch_save(folder, tmp_path / "full.pt")
    assert torch.equal(torch.load(tmp_path / "full.pt")["head.weight"], model.embed.weight)


def test_convert_safetensors_to_dcp_and_back_is_identical(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    paramio.save(tiny_lm(), source)
    paramio.convert(source, tmp_path / "ckpt", format="dcp")
    paramio.convert(tmp_path / "ckpt", tmp_path / "again.safetensors")
    assert source.read_bytes() == (tmp_path / "again.safetensors").read_bytes()


def test_same_model_gives_identical_dcp_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        paramio.save(tiny_lm(), tmp_path / name, format="dcp")
    for file in (".metadata", "__0_0.distcp"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_overwrite_replaces_the_checkpoint_whole_and_a_failed_one_leaves_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ckpt"
    paramio.save(tiny_lm(seed=1), folder, format="dcp")
    paramio.save(tiny_lm(seed=2), folder, format="dcp")
    assert len(list(folder.glob("*.distcp"))) == 1  # the old data file went after the commit
    assert paramio.diff(folder, paramio.collect(tiny_lm(seed=2))).equal
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(FormatError, match="disk full"):
        paramio.save(tiny_lm(seed=3), folder, format="dcp")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_storage_writer_alone_behind_the_stock_planner(tmp_path: Path) -> None:
    import paramio.dcp

    model = tiny_lm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(model.state_dict(), storage_writer=paramio.dcp.StorageWriter(tmp_path / "ckpt"))
    ck = paramio.load(tmp_path / "ckpt")
    assert ck["head.weight"] is ck["embed.weight"]
    assert paramio.validate(tmp_path / "ckpt").ok


def test_import_paramio_does_not_import_dcp() -> None:
    import subprocess
    import sys

    code = ("import sys, paramio; paramio.load; import paramio.locations;"
            "print('torch.distributed.checkpoint' in sys.modules);"
            "print(paramio.dcp.StorageWriter.__name__, 'torch.distributed.checkpoint' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "StorageWriter", "True"]  # imported on first use of paramio.dcp


# -- the command line ---------------------------------------------------------------------------------------
def _cli(*args: str | Path, code: int = 0) -> str:
    from typer.testing import CliRunner

    from paramio.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def test_cli_inspect_shows_chunks_and_ranks(lm_ckpt: Path) -> None:
    out = _cli("inspect", lm_ckpt)
    assert "chunks (torch.distributed.checkpoint)" in out and "__0_0.distcp" in out
    payload = json.loads(_cli("inspect", lm_ckpt, "--json"))
    rows = {r["name"]: r for r in payload["chunks"]}
    assert payload["format"] == "dcp" and rows["embed.weight"]["ranks"] == [0]
    assert rows["embed.weight"]["chunks"][0]["sizes"] == [32, 16]


def test_cli_converts_dcp_to_safetensors_and_back(lm_ckpt: Path, tmp_path: Path) -> None:
    _cli("convert", lm_ckpt, tmp_path / "model.safetensors")
    _cli("convert", tmp_path / "model.safetensors", tmp_path / "again", "--format", "dcp")
    assert paramio.diff(lm_ckpt, tmp_path / "again").equal


def test_cli_refuses_metadata_that_would_run_code(lm_ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _rewrite(lm_ckpt, lambda md: setattr(md, "planner_data", {"x": _Marker(marker)}))
    for args in (["inspect", lm_ckpt], ["validate", lm_ckpt], ["convert", lm_ckpt, tmp_path / "o.safetensors"],
                 ["diff", lm_ckpt, lm_ckpt], ["inspect", lm_ckpt, "--stats"]):
        out = _cli(*args, code=2)
        assert "refuses `builtins.exec`" in out and "Traceback" not in out
    assert not marker.exists()


def test_the_benchmark_phase_runs_and_prints_its_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = pytest.importorskip("benchmarks.run")
    code = run.main(["--scale", "tiny", "--runs", "1", "--cases", "gpt2", "--formats", "dcp", "--in-process",
                     "--tmp", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "error" not in out
    assert "| dcp.save: FileSystemWriter vs paramio.dcp.StorageWriter |" in out
    assert "stock DCP -> safetensors: paramio extra peak" in out and "DCP save: bytes on disk" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["model.safetensors", "model.h5", "model.pt", "model.onnx", "hf/"])
def test_a_stock_dcp_folder_converts_to_every_format_and_to_a_sharded_folder(lm_ckpt: Path, tmp_path: Path,
                                                                            target: str) -> None:
    out = tmp_path / target
    paramio.convert(lm_ckpt, out, **({"max_shard_size": "2KB"} if target.endswith("/") else {}))
    if target.endswith("/"):
        assert len(list(out.glob("model-*.safetensors"))) > 1
    ck = paramio.load(out)
    for name, tensor in tiny_lm().state_dict().items():
        assert same(ck[name], tensor), name
    model = untied_lm()
    paramio.load_into(model, out)  # the copies restore nothing the untied model lacks, and load
    assert torch.equal(model.head.weight, tiny_lm().embed.weight)
