"""Hostile files, for every format: mutation fuzzing of each reader, files that declare a terabyte, files that
point outside themselves, pickles that would run code, and the caps on what one file may declare.

Every file here is read by every read path (``read_manifest``, ``load``, ``validate``, ``paramio inspect
[--stats]``, ``paramio validate``) in a worker process with a memory cap (RLIMIT_AS) and a time limit, so a
segfault, a hang or a huge allocation fails the test instead of the test run (see tests/fuzzing.py). The
campaign here is bounded (``PARAMIO_FUZZ_CASES`` scales it, ``PARAMIO_FUZZ_SEED`` picks other cases);
``make fuzz`` runs a long one.
"""

from __future__ import annotations

import ast
import collections
import io
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import paramio
import paramio.limits
from paramio.errors import FormatError
from paramio.examples import tiny_lm

from .fuzzing import BAD, EVIL, FOLDER, MARKER, WorkerPool, campaign, describe, evil_pickle, zip_build, zip_members
from .reliability import SUFFIX, formats_present

FORMATS = formats_present()
_SCALE = float(os.environ.get("PARAMIO_FUZZ_CASES", "1"))
#: Mutated files per format in the normal suite (about a minute on 2 busy cores for all four formats).
CASES = {fmt: int(n * _SCALE) for fmt, n in {"safetensors": 400, "hdf5": 150, "onnx": 300, "torch": 300,
                                             FOLDER: 150}.items()}
BASE_SEED = int(os.environ.get("PARAMIO_FUZZ_SEED", "1"))
TERABYTE = 2**40
SECRET = b"SECRET"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    workers = WorkerPool(2, timeout=120, formats=FORMATS, log_dir=tmp_path_factory.mktemp("fuzz-logs"))
    yield workers
    workers.close()


def in_worker(pool: WorkerPool, fmt: str, path: Path, timeout: float = 60) -> dict:
    """Every read path on ``path`` in a capped worker process."""
    (result,) = pool.map([{"fmt": fmt, "case": 0, "path": str(path), "timeout": timeout}])
    return result


def assert_refused(result: dict, path: Path) -> None:
    """No finding, and ``load`` refused the file with a paramio error naming it."""
    assert result["outcome"] not in BAD, describe(result)
    outcome, message = result["checks"]["load"]
    assert outcome == "error", f"load gave {outcome}: {message}"
    assert str(path) in message


# -- mutation fuzzing -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(pool: WorkerPool, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    return campaign([*FORMATS, FOLDER], CASES, base_seed=BASE_SEED, workdir=tmp_path_factory.mktemp("fuzz"),
                    pool=pool)


@pytest.mark.slow  # the campaign: ~1,300 mutated files and folders through every read path in capped workers
@pytest.mark.parametrize("fmt", [*FORMATS, FOLDER])
def test_mutated_files_give_paramio_errors_or_verified_data(fuzzed: dict[str, list[dict]], fmt: str) -> None:
    results = fuzzed[fmt]
    assert len(results) == CASES[fmt]
    bad = [r for r in results if r["outcome"] in BAD]
    hint = f"\nreproduce one with: python -m tests.fuzzing --seed {BASE_SEED} --replay {fmt}:CASE"
    assert not bad, f"{len(bad)} findings:\n" + "\n\n".join(describe(r) for r in bad[:5]) + hint
    outcomes = collections.Counter(r["outcome"] for r in results)
    # The mutations reach the readers' checks (most files are refused, each for its own reason) ...
    assert outcomes["error"] > len(results) // 2, outcomes
    assert outcomes["skip"] < len(results) // 10, outcomes
    messages = {detail.split(": ", 2)[-1][:50] for r in results for o, detail in r["checks"].values() if o == "error"}
    assert len(messages) >= 10, messages
    # ... and a file that still reads gave its data through the checksums (or was a valid file of its own).
    assert all(r["checks"]["load"][0] in ("ok", "ok-unverified", "error") for r in results if r["checks"])


# -- declared sizes ---------------------------------------------------------------------------------------------


def _terabyte_safetensors(folder: Path) -> Path:
    header = json.dumps({"big": {"dtype": "F32", "shape": [TERABYTE // 4], "data_offsets": [0, TERABYTE]}}).encode()
    path = folder / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return path


def _terabyte_hdf5(folder: Path, chunks: tuple[int, ...] | None) -> Path:
    path = folder / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_group("tensors").create_dataset("big", shape=(TERABYTE // 4,), dtype="f4", chunks=chunks)
    return path


def _terabyte_onnx(folder: Path, external: bool) -> Path:
    import onnx
    from onnx import helper

    tensor = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[TERABYTE // 4])
    if external:
        (folder / "big.bin").write_bytes(bytes(64))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "big.bin"), ("offset", "0"), ("length", str(TERABYTE))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    else:
        tensor.raw_data = bytes(16)
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("big", onnx.TensorProto.FLOAT, None)],
                              [tensor])
    path = folder / "big.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def _pickle_with_ints(data: bytes, old: int, new: int) -> bytes:
    """The pickle with every small integer ``old`` re-encoded as ``new`` (a LONG1)."""
    import pickletools

    out, last = bytearray(), 0
    for op, arg, pos in pickletools.genops(data):
        if op.name in ("BININT1", "BININT2", "BININT") and arg == old:
            width = {"BININT1": 1, "BININT2": 2, "BININT": 4}[op.name]
            raw = new.to_bytes((new.bit_length() + 8) // 8, "little", signed=True)
            out += data[last:pos] + b"\x8a" + bytes([len(raw)]) + raw
            last = pos + 1 + width
    return bytes(out + data[last:])


def _terabyte_torch(folder: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"big": torch.zeros(7)}, buffer)  # numel 7: the only 7 in the pickle is the size and numel
    members = zip_members(buffer.getvalue())
    members = [(n, _pickle_with_ints(d, 7, TERABYTE // 4) if n.endswith("data.pkl") else d) for n, d in members]
    path = folder / "big.pt"
    path.write_bytes(zip_build(members))
    return path


TERABYTE_FILES: dict[str, Callable[[Path], Path]] = {
    "safetensors": _terabyte_safetensors,
    "hdf5-contiguous": lambda folder: _terabyte_hdf5(folder, None),
    "hdf5-chunked": lambda folder: _terabyte_hdf5(folder, (4096,)),
    "onnx-inline": lambda folder: _terabyte_onnx(folder, False),
    "onnx-external": lambda folder: _terabyte_onnx(folder, True),
    "torch": _terabyte_torch,
}


@pytest.mark.parametrize("variant", [v for v in TERABYTE_FILES if v.split("-")[0] in FORMATS])
def test_a_file_declaring_a_terabyte_tensor_is_refused_before_any_allocation(
        pool: WorkerPool, tmp_path: Path, variant: str) -> None:
    path = TERABYTE_FILES[variant](tmp_path)
    assert path.stat().st_size < 4096
    result = in_worker(pool, variant.split("-")[0], path, timeout=30)
    assert_refused(result, path)
    with pytest.raises(FormatError, match="big") as info:
        paramio.load(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif("torch" not in FORMATS, reason="the torch format module is not in this checkout")
def test_a_legacy_pickle_claiming_a_4_gb_string_is_refused_without_allocating(pool: WorkerPool,
                                                                               tmp_path: Path) -> None:
    """Found by atheris: torch's unpickler allocates a string's claimed length before reading it."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    at = data.rindex(b"\x80\x02]q\x00X") + 5  # the storage keys, the pickle torch reads after the tensors'
    path = tmp_path / "legacy.pt"
    path.write_bytes(data[:at + 1] + struct.pack("<I", 2**32 - 16) + data[at + 5:])
    assert_refused(in_worker(pool, "torch", path), path)


def test_a_view_with_more_elements_than_its_base_is_refused_both_ways(tmp_path: Path) -> None:
    """An expanded (stride-0) view costs no memory in the file but any number of elements once used: a file
    may not declare one (found by fuzzing: ``inspect --stats`` tried to allocate 8 TB), and saving one asks
    for a copy instead."""
    base = torch.arange(3.0)
    with pytest.raises(paramio.errors.TieError, match="`wide` have more elements than `base`"):
        paramio.save({"base": base, "wide": base.expand(4, 3)}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    manifest = paramio.save({"base": base, "part": base[1:]}, tmp_path / "m.safetensors")
    hostile = json.loads(manifest.to_json())
    hostile["views"][0].update(shape=[2**20, 2**20], stride=[0, 0], offset=0)
    with pytest.raises(ValueError, match="more elements than its base"):
        paramio.Manifest.from_json(json.dumps(hostile))


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_count_and_manifest_size_caps(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"five{SUFFIX[fmt]}"
    paramio.save({f"t{i}": torch.full((2,), float(i)) for i in range(5)}, path)
    assert len(paramio.load(path)) == 5
    monkeypatch.setattr(paramio.limits, "MAX_TENSORS", 4)
    with pytest.raises(FormatError, match="5 tensors, more than the cap of 4"):
        paramio.load(path)
    monkeypatch.setattr(paramio.limits, "MAX_TENSORS", 5)
    monkeypatch.setattr(paramio.limits, "MAX_MANIFEST_BYTES", 200)
    with pytest.raises(FormatError, match="manifest, more than the cap of 200"):
        paramio.read_manifest(path)
    assert not paramio.validate(path).ok


# -- reads stay inside the file ---------------------------------------------------------------------------------


def _outside(folder: Path) -> tuple[Path, Path]:
    """A checkpoint folder and, beside it, a secret file a hostile checkpoint may point to."""
    inner = folder / "checkpoint"
    inner.mkdir()
    secret = folder / "secret.bin"
    secret.write_bytes(SECRET + bytes(58))
    with h5py.File(folder / "secret.h5", "w") as f:
        f["data"] = np.frombuffer(SECRET + bytes(2), dtype=np.uint8)
    return inner, secret


def _h5(inner: Path, build: Callable[[h5py.Group], None]) -> Path:
    path = inner / "m.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("tensors")
        group["w"] = np.ones(8, dtype=np.uint8)
        build(group)
    return path


def _onnx_external(inner: Path, location: str) -> Path:
    import onnx
    from onnx import helper

    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.UINT8, dims=[8],
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", onnx.TensorProto.UINT8, [8])], [tensor])
    path = inner / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def _symlinked(inner: Path, secret: Path) -> Path:
    (inner / "data.bin").symlink_to(Path("..") / secret.name)
    return _onnx_external(inner, "data.bin")


OUTSIDE: dict[str, Callable[[Path, Path], Path]] = {
    "hdf5-external-link-absolute": lambda inner, secret: _h5(
        inner, lambda g: g.__setitem__("x", h5py.ExternalLink(str(secret.parent / "secret.h5"), "/data"))),
    "hdf5-external-link-relative": lambda inner, secret: _h5(
        inner, lambda g: g.__setitem__("x", h5py.ExternalLink("../secret.h5", "/data"))),
    "hdf5-virtual-dataset": lambda inner, secret: _h5(inner, lambda g: _vds(g, secret.parent / "secret.h5")),
    "hdf5-external-storage": lambda inner, secret: _h5(
        inner, lambda g: g.create_dataset("x", shape=(8,), dtype="u1", external=[(str(secret), 0, 8)])),
    "onnx-absolute-location": lambda inner, secret: _onnx_external(inner, str(secret)),
    "onnx-dotdot-location": lambda inner, secret: _onnx_external(inner, "../secret.bin"),
    "onnx-dotdot-inside-location": lambda inner, secret: _onnx_external(inner, "sub/../../secret.bin"),
    "onnx-symlink-out-of-folder": _symlinked,
    "onnx-device-file": lambda inner, secret: _onnx_external(inner, "/dev/zero"),
}


def _vds(group: h5py.Group, source: Path) -> None:
    layout = h5py.VirtualLayout(shape=(8,), dtype="u1")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(8,))
    group.create_virtual_dataset("x", layout)


@pytest.mark.parametrize("variant", [v for v in OUTSIDE if v.split("-")[0] in FORMATS])
def test_a_file_pointing_outside_itself_is_refused(pool: WorkerPool, tmp_path: Path, variant: str) -> None:
    inner, secret = _outside(tmp_path)
    path = OUTSIDE[variant](inner, secret)
    result = in_worker(pool, variant.split("-")[0], path)
    assert_refused(result, path)
    for read in (paramio.load, paramio.read_manifest, paramio.validate):
        with pytest.raises(FormatError, match="(?i)external|outside|virtual|link|absolute|folder") as info:
            read(path)
        assert str(path) in str(info.value) and "SECRET" not in str(info.value)


# -- pickles ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif("torch" not in FORMATS, reason="the torch format module is not in this checkout")
@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("attack", EVIL)
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path, container: str, attack: str) -> None:
    marker = tmp_path / MARKER
    payload = evil_pickle(marker, attack)
    path = tmp_path / "evil.pt"
    if container == "zip":
        buffer = io.BytesIO()
        torch.save({"w": torch.ones(2)}, buffer)
        members = [(n, payload if n.endswith("data.pkl") else d) for n, d in zip_members(buffer.getvalue())]
        path.write_bytes(zip_build(members))
    else:
        path.write_bytes(payload)
    for read in (paramio.load, paramio.read_manifest, paramio.validate):
        with pytest.raises(FormatError) as info:
            read(path)
        assert str(path) in str(info.value)
    assert not marker.exists()


# The calls that unpickle (or otherwise run code from data); torch.load only with weights_only=True.
_UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal",
                       "jsonpickle"}
_UNPICKLING_CALLS = {"load", "loads", "Unpickler", "_Unpickler", "open", "decode"}
_CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every call in ``source`` that could unpickle data or run code from it."""
    tree = ast.parse(source, filename)
    torch_names = {"torch"}
    numpy_names = {"numpy", "np"}
    from_torch: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
                if alias.name == "numpy":
                    numpy_names.add(alias.asname or "numpy")
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            from_torch |= {a.asname or a.name for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"{filename}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords}
        if isinstance(func, ast.Name) and func.id in _CODE_BUILTINS:
            found.append(f"{where}: {func.id}()")
        if isinstance(func, ast.Name) and func.id in from_torch:
            func = ast.Attribute(value=ast.Name(id="torch"), attr="load")
        if not isinstance(func, ast.Attribute):
            continue
        owner = ast.unparse(func.value)
        if owner in _UNPICKLING_MODULES and func.attr in _UNPICKLING_CALLS:
            found.append(f"{where}: {owner}.{func.attr}()")
        if owner in torch_names | {"torch"} and func.attr == "load":
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load() without weights_only=True")
        if owner in ("torch.jit", "torch.package", "pandas", "pd") and func.attr in ("load", "read_pickle"):
            found.append(f"{where}: {owner}.{func.attr}()")
        if owner in numpy_names and func.attr == "load":
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where}: {owner}.load(allow_pickle=...)")
        if owner == "yaml" and func.attr in ("load", "unsafe_load", "full_load"):
            found.append(f"{where}: yaml.{func.attr}()")
    return found


def test_the_unsafe_call_check_sees_each_pattern() -> None:
    source = """
import pickle, torch, numpy as np
from torch import load as tl
pickle.loads(b"")
pickle.Unpickler(f).load()
torch.load(p)
torch.load(p, weights_only=False)
tl(p)
np.load(p, allow_pickle=True)
eval("1")
torch.jit.load(p)
torch.load(p, weights_only=True)
np.load(p)
model.eval()
"""
    assert len(unsafe_calls(source)) == 8


def test_paramio_never_unpickles_beyond_weights_only() -> None:
    package = Path(paramio.__file__).parent
    found = [call for path in sorted(package.rglob("*.py"))
             for call in unsafe_calls(path.read_text(), str(path.relative_to(package.parent)))]
    assert not found, "calls that could run code from a file:\n" + "\n".join(found)


# -- known findings, routed to the format's owner -------------------------------------------------------------


@pytest.mark.skipif("hdf5" not in FORMATS, reason="the hdf5 format module is not in this checkout")
def test_hdf5_manifest_with_a_corrupt_heap_size_is_refused_not_hung(pool: WorkerPool, tmp_path: Path) -> None:
    """Found by tests/fuzzing.py (seed 3, hdf5 case 250): libhdf5 loops forever reading a variable-length
    string whose global-heap size field was altered. paramio now writes fixed-length strings and refuses a
    variable-length manifest before reading it; this rebuilds the hanging file to prove it."""
    path = tmp_path / "m.h5"
    paramio.save(tiny_lm(), path)
    with h5py.File(path, "r+") as f:  # the layout of the hanging file: the manifest as a variable-length string
        text = f.attrs["paramio.manifest"].decode()
        del f.attrs["paramio.manifest"]
        f.attrs["paramio.manifest"] = text
    data = bytearray(path.read_bytes())
    at = data.index(b'{"schema_version"')
    (size,) = struct.unpack_from("<Q", data, at - 8)  # the global heap object's size, just before its bytes
    assert size == len(text)
    struct.pack_into("<Q", data, at - 8, size + 2048)
    path.write_bytes(bytes(data))
    assert_refused(in_worker(pool, "hdf5", path, timeout=8), path)
