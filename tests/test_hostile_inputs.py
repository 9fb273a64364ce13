"""Hostile inputs and faults found by held-out testing (issue 14), each as the story of a user handed a crafted
file: HDF5 links that leave the file, ``.pt`` tensors larger than their storage and zip bombs, ONNX external
data under concurrent saves, mapped checkpoints whose file another program rewrites in place, an oversized
HDF5 manifest, and signature files that are FIFOs or huge.

Anything that could hang or crash (a FIFO, a SIGBUS) runs in a subprocess with a time limit, so a failure fails
the test instead of the test run; nothing here allocates more than a few megabytes (huge files are sparse).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import paramio
from paramio.errors import FormatError

ROOT = Path(__file__).resolve().parent.parent
SECRET = np.frombuffer(b"SECRET!!", dtype=np.uint8)


def run_python(code: str, *, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter; a hang is a failed test (TimeoutExpired), a signal a negative rc."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


def run_capped(code: str, *, timeout: float = 120, mem_mb: int = 1024) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that may map at most ``mem_mb`` more than paramio and torch take
    (RLIMIT_AS), so that a huge allocation fails there instead of exhausting the machine. ``cli(*args)`` runs
    ``python -m paramio`` in it and returns the exit code."""
    prelude = f"""
        import runpy, sys
        import paramio, paramio.cli, torch
        from tests.fuzzing import cap_memory

        def cli(*args):
            sys.argv = ["paramio", *args]
            try:
                runpy.run_module("paramio", run_name="__main__", alter_sys=True)
            except SystemExit as e:
                return e.code
            return 0

        cap_memory({mem_mb})
        """
    return run_python(textwrap.dedent(prelude) + textwrap.dedent(code), timeout=timeout)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paramio", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# -- HDF5 links that leave the file ------------------------------------------------------------------------


def _outside_h5(folder: Path) -> Path:
    """A file beside the checkpoint folder with paramio's layout, holding a secret in a chunked dataset (read
    through libhdf5, so a followed link returns its bytes whatever the checkpoint's size)."""
    outside = folder / "outside.h5"
    with h5py.File(outside, "w") as f:
        for group in ("tensors", "grads"):
            f.create_group(group).create_dataset("w", data=SECRET, chunks=(4,))
        f["data"] = SECRET
    return outside


def _checkpoint(folder: Path, attack: str, outside: Path) -> Path:
    """A paramio-written HDF5 checkpoint of ``w``, then edited by the attacker with h5py."""
    inner = folder / "checkpoint"
    inner.mkdir()
    path = inner / "m.h5"
    paramio.save({"w": torch.zeros(8, dtype=torch.uint8)}, path, grads=False)
    absolute, relative = str(outside), os.path.relpath(outside, inner)
    with h5py.File(path, "r+") as f:
        if attack == "tensors-external-absolute":
            del f["tensors"]
            f["tensors"] = h5py.ExternalLink(absolute, "/tensors")
        elif attack == "tensors-external-relative":
            del f["tensors"]
            f["tensors"] = h5py.ExternalLink(relative, "/tensors")
        elif attack == "grads-external":
            f["grads"] = h5py.ExternalLink(absolute, "/grads")
        elif attack == "tensors-soft-via-external-root":
            del f["tensors"]
            f["ext"] = h5py.ExternalLink(absolute, "/")
            f["tensors"] = h5py.SoftLink("/ext/tensors")
        elif attack == "dataset-soft-via-external-root":
            f["ext"] = h5py.ExternalLink(absolute, "/")
            f["tensors/x"] = h5py.SoftLink("/ext/data")
        elif attack == "nested-group-external":
            f["tensors/sub"] = h5py.ExternalLink(absolute, "/tensors")
        else:
            raise AssertionError(attack)
    return path


LINK_ATTACKS = {
    "tensors-external-absolute": "`/tensors` is an external link",
    "tensors-external-relative": "`/tensors` is an external link",
    "grads-external": "`/grads` is an external link",
    "tensors-soft-via-external-root": "soft link `/tensors` -> '/ext/tensors': `/ext` is an external link",
    "dataset-soft-via-external-root": "soft link `x` -> '/ext/data': `/ext` is an external link",
    "nested-group-external": "`sub` is an external link",
}


@pytest.mark.parametrize("attack", LINK_ATTACKS)
def test_an_hdf5_link_that_leaves_the_file_is_refused_by_every_verb(tmp_path: Path, attack: str) -> None:
    """A user is handed ``m.h5`` whose group (or a soft link's path) is an external link: loading, converting
    or inspecting it must not read the other file (libhdf5 would open it), and the error names the link."""
    outside = _outside_h5(tmp_path)
    path = _checkpoint(tmp_path, attack, outside)
    expected = LINK_ATTACKS[attack]
    for read in (paramio.load, paramio.read_manifest, paramio.validate,
                 lambda p: paramio.convert(p, tmp_path / "copy.safetensors")):
        with pytest.raises(FormatError) as info:
            read(path)
        message = str(info.value)
        assert str(path) in message and expected in message, message
        assert "SECRET" not in message
    assert not (tmp_path / "copy.safetensors").exists()
    result = run_cli("inspect", "--stats", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "SECRET" not in result.stdout


def test_an_hdf5_external_link_to_a_fifo_does_not_hang(tmp_path: Path) -> None:
    """libhdf5 opens an external link's file with a blocking open(): a FIFO there would hang the reader
    forever. The link is refused before anything opens it."""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    path = tmp_path / "m.h5"
    paramio.save({"w": torch.ones(2)}, path)
    with h5py.File(path, "r+") as f:
        del f["tensors"]
        f["tensors"] = h5py.ExternalLink(str(fifo), "/tensors")
    result = run_python(f"""
        import paramio
        try:
            paramio.load({str(path)!r})
        except paramio.errors.FormatError as e:
            print(e)
        """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "`/tensors` is an external link" in result.stdout and str(fifo) in result.stdout


def test_hdf5_soft_links_inside_the_file_still_import(tmp_path: Path) -> None:
    """Soft links that stay in the file are fine: a ``/tensors`` group reached by a soft link, and a soft-linked
    alias (a link to a link), both read as h5py would."""
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_group("real")["w"] = np.arange(4, dtype=np.float32)
        f["tensors"] = h5py.SoftLink("/real")
        f["real/alias"] = h5py.SoftLink("/tensors/w")
        f["real/alias2"] = h5py.SoftLink("alias")
    ck = paramio.load(path)
    assert ck["alias"] is ck["w"] and ck["alias2"] is ck["w"]
    assert ck["w"].tolist() == [0, 1, 2, 3]


# -- HDF5 manifest cap -------------------------------------------------------------------------------------


def _peak_memory_of(code: str) -> tuple[int, str]:
    """Run ``code`` (which prints) in a fresh interpreter; the peak of the memory it allocated (MB, as
    tracemalloc sees Python and numpy allocations) and what it printed."""
    result = run_python(f"""
        import tracemalloc, paramio, torch
        tracemalloc.start()
        {textwrap.indent(textwrap.dedent(code), '        ').strip()}
        print(tracemalloc.get_traced_memory()[1] >> 20)
        """, timeout=120)
    assert result.returncode == 0, result.stderr
    *lines, peak = result.stdout.strip().splitlines()
    return int(peak), "\n".join(lines)


def test_an_oversized_hdf5_manifest_is_refused_from_its_declared_size(tmp_path: Path) -> None:
    """A file whose manifest attribute declares more than the cap is refused before the attribute is read:
    reading it whole, decoding and parsing it would cost several times its size in memory."""
    path = tmp_path / "m.h5"
    paramio.save({"w": torch.ones(2)}, path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["paramio.manifest"]
        f.attrs.create("paramio.manifest", np.bytes_(text + b" " * (48 << 20)),
                       dtype=h5py.string_dtype("utf-8", len(text) + (48 << 20)))
    peak, message = _peak_memory_of(f"""
        paramio.limits.MAX_MANIFEST_BYTES = 1 << 20
        try:
            paramio.read_manifest({str(path)!r})
        except paramio.errors.FormatError as e:
            print(e)
        """)
    assert peak < 8, f"refusing the manifest allocated {peak} MB"
    assert f"declares a {len(text) + (48 << 20)}-byte manifest, more than the cap of {1 << 20}" in message
    assert str(path) in message


def test_an_oversized_hdf5_manifest_is_a_validate_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.h5"
    paramio.save({"w": torch.ones(2)}, path)
    monkeypatch.setattr(paramio.limits, "MAX_MANIFEST_BYTES", 100)
    report = paramio.validate(path)
    assert not report.ok and "more than the cap of 100" in report.problems[0]
    monkeypatch.setattr(paramio.limits, "MAX_MANIFEST_BYTES", 1 << 20)
    assert paramio.validate(path).ok


# -- .pt storage bounds and zip bombs --------------------------------------------------------------------------


def _repeating(kind: str) -> tuple[torch.Tensor, int]:
    """A tensor with far more elements than its storage, and its element count: every element the same one
    (stride 0), or rows that overlap (strides (1, 1))."""
    if kind == "stride-0":
        return torch.zeros(1).expand(2**20, 2**20), 2**40
    return torch.zeros(2**17, dtype=torch.uint8).as_strided((2**16, 2**16), (1, 1)), 2**32


def _save_repeating(path: Path, kind: str, with_manifest: bool) -> int:
    """torch.save of a state dict holding such a tensor (a 1.5 kB file for stride 0), with or without a
    paramio manifest that describes it (shape and all, so that only the storage tells it apart)."""
    tensor, numel = _repeating(kind)
    state = OrderedDict(w=tensor, b=torch.ones(3))
    if with_manifest:
        small = path.with_name("small.pt")
        paramio.save({"w": torch.zeros(4, dtype=tensor.dtype), "b": torch.ones(3)}, small)
        manifest = json.loads(paramio.read_manifest(small).to_json())
        manifest["tensors"][0]["shape"] = list(tensor.shape)
        state._metadata = OrderedDict([("paramio.manifest", json.dumps(manifest))])  # type: ignore[attr-defined]
        small.unlink()
    torch.save(state, path)
    return numel


@pytest.mark.parametrize("with_manifest", [False, True], ids=["stock", "manifest"])
@pytest.mark.parametrize("kind", ["stride-0", "overlapping"])
def test_a_pt_tensor_with_more_elements_than_its_storage_is_refused(tmp_path: Path, kind: str,
                                                                    with_manifest: bool) -> None:
    """A 1.5 kB ``.pt`` declares a 4 TiB tensor over one stored float (stride 0): ``load`` handed it on, and
    ``convert``, checksums, ``inspect --stats`` and ``diff`` then tried to expand it. Every verb refuses it,
    at once, naming the tensor (in a process capped at 1 GiB, and within a time limit)."""
    path = tmp_path / "m.pt"
    numel = _save_repeating(path, kind, with_manifest)
    assert path.stat().st_size < 600_000
    result = run_capped(f"""
        path = {str(path)!r}
        verbs = {{
            "load": lambda: paramio.load(path),
            "validate": lambda: paramio.validate(path),
            "convert": lambda: paramio.convert(path, {str(tmp_path / "out.safetensors")!r}),
            "diff": lambda: paramio.diff(path, path),
        }}
        if callable(getattr(paramio, "stats", None)):  # issue 13's statistics, where this checkout has them
            verbs["stats"] = lambda: paramio.stats(path)
        for verb, run in verbs.items():
            try:
                run()
                print(verb, "accepted")
            except paramio.errors.FormatError as e:
                print(verb, "refused", e)
        print("cli", cli("inspect", "--stats", path))
        """, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    expected = f"{path}: tensor `w` declares {numel} elements"
    assert {"load", "validate", "convert", "diff"} <= set(lines), result.stdout[-2000:]
    for verb in set(lines) - {"cli"}:
        assert lines[verb].startswith(f"refused {expected}"), (verb, result.stdout[-2000:])
    assert lines["cli"] == "2" and expected in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_pt_whose_pickle_inflates_to_2_gib_is_refused_before_inflating(tmp_path: Path) -> None:
    """A 2 MB ``.pt`` whose data.pkl record is deflated from 2 GiB (sizes declared honestly in the central
    directory): torch would inflate all of it into memory. The declared size is refused before that."""
    import zlib

    from .fuzzing import zip_members, zip_with_bomb

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    members = zip_members(buffer.getvalue())
    pickle_name = next(n for n, _ in members if n.endswith("data.pkl"))
    crc, zeros = 0, bytes(1 << 24)
    for _ in range(128):
        crc = zlib.crc32(zeros, crc)
    path = tmp_path / "bomb.pt"
    path.write_bytes(zip_with_bomb(members, pickle_name, 2**31, crc))
    assert path.stat().st_size < 3 << 20
    result = run_capped(f"""
        for verb in (paramio.load, paramio.read_manifest):
            try:
                verb({str(path)!r})
                print("accepted")
            except paramio.errors.FormatError as e:
                print("refused", e)
        """, mem_mb=1024)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = f"refused {path}: compressed record `{pickle_name}` declares {2**31} bytes once inflated"
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]] * 2, result.stdout
    assert result.stdout.startswith(expected) and "refused before inflating it" in result.stdout, result.stdout


def test_a_pt_with_compressed_tensor_data_is_refused_not_read_as_garbage(tmp_path: Path) -> None:
    """A torch.save file re-zipped with deflate: ``torch.load(mmap=True)`` maps the deflated bytes as if they
    were the values, so the file loaded as garbage without a word. It is refused, naming the record."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buffer)
    from .fuzzing import zip_members

    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in zip_members(buffer.getvalue()):
            z.writestr(name, data)
    assert torch.load(path, weights_only=True)["w"].eq(0).all()  # torch without mmap inflates it: zeros
    with pytest.raises(FormatError, match=r"tensor record `.*/data/0` is compressed") as info:
        paramio.load(path)
    assert str(path) in str(info.value)


# -- signature files that are FIFOs or huge --------------------------------------------------------------------


def test_a_signature_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """``validate(f, against="sig.json")`` with a FIFO named sig.json blocked forever in open()/read()."""
    checkpoint = tmp_path / "m.safetensors"
    paramio.save({"w": torch.ones(2)}, checkpoint)
    fifo = tmp_path / "sig.json"
    os.mkfifo(fifo)
    result = run_python(f"""
        import paramio
        for call in (lambda: paramio.validate({str(checkpoint)!r}, against={str(fifo)!r}),
                     lambda: paramio.signature({str(fifo)!r})):
            try:
                call()
                print("accepted")
            except paramio.errors.FormatError as e:
                print(e)
        """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{fifo}: a FIFO (named pipe), not a signature file; give the path of a "
                                          "JSON file written by `paramio signature -o`"] * 2


def test_a_10_gb_signature_file_is_refused_by_its_size_before_reading(tmp_path: Path) -> None:
    """A sparse 10 GB ``sig.json`` was read whole (a raw MemoryError where memory is short): refused from its
    size, in a process that could not even hold a tenth of it."""
    checkpoint = tmp_path / "m.safetensors"
    paramio.save({"w": torch.ones(2)}, checkpoint)
    huge = tmp_path / "sig.json"
    with open(huge, "wb") as fh:
        fh.truncate(10 * 10**9)
    result = run_capped(f"""
        try:
            paramio.validate({str(checkpoint)!r}, against={str(huge)!r})
            print("accepted")
        except paramio.errors.FormatError as e:
            print(e)
        """, mem_mb=512)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"{huge}: 10000000000 bytes, more than the cap of "
                                     f"{paramio.limits.MAX_MANIFEST_BYTES} for a signature (a signature is no "
                                     "larger than a manifest); refused before reading it")


def test_a_signature_file_written_by_paramio_still_validates(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 3)
    checkpoint, sig = tmp_path / "m.safetensors", tmp_path / "sig.json"
    paramio.save(model, checkpoint)
    sig.write_text(paramio.signature(model).to_json())
    assert paramio.validate(checkpoint, against=sig).ok


# -- ONNX external data under concurrent saves -----------------------------------------------------------------

_SAVER = """
import sys, torch, paramio
path, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    v = float(writer * 1000 + i)
    paramio.save({"a": torch.full((256,), v), "b": torch.full((64,), v)}, path, external_data=True, durable=False)
"""
_LOADER = """
import os, sys, paramio
path, stop = sys.argv[1], sys.argv[2]
loads = 0
while not os.path.exists(stop):
    try:
        ck = paramio.load(path)
    except paramio.errors.FormatError as e:
        print("error", e, flush=True)
        continue
    values = {float(t[0]) for t in ck.values()} | {float(t[-1]) for t in ck.values()}
    if len(values) != 1:
        print("mixed", sorted(values), flush=True)
    loads += 1
print("loads", loads)
"""


def test_onnx_saves_and_loads_of_one_model_from_several_processes(tmp_path: Path) -> None:
    """Two processes keep saving one ONNX model with external data while a third keeps loading it: every load
    reads one whole version (each tensor of the same save) and none fails because a save removed the data
    file of the version it had opened; afterwards the folder holds the model and the one data file it uses."""
    path, stop = tmp_path / "m.onnx", tmp_path / "stop"
    paramio.save({"a": torch.full((256,), -1.0), "b": torch.full((64,), -1.0)}, path, external_data=True)
    loader = subprocess.Popen([sys.executable, "-c", _LOADER, str(path), str(stop)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    savers = [subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(w), "60"], cwd=ROOT, text=True,
                               stderr=subprocess.PIPE) for w in (1, 2)]
    try:
        for saver in savers:
            assert saver.wait(timeout=300) == 0, saver.stderr.read()[-2000:]
    finally:
        stop.touch()
        out, err = loader.communicate(timeout=120)
    assert loader.returncode == 0, err[-2000:]
    lines = out.splitlines()
    assert lines[-1].startswith("loads ") and int(lines[-1].split()[1]) > 0, out[-2000:]
    assert lines[:-1] == [], "\n".join(lines[:10])
    ck = paramio.load(path)
    assert float(ck["a"][0]) in (1059.0, 2059.0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "stop") == sorted(
        ["m.onnx", *(p.name for p in paramio.formats.onnx.external.data_files(path))])


def test_a_concurrent_onnx_save_never_deletes_the_data_of_the_model_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Save X has put its model in place and its cleanup has read which data files that model uses; before it
    removes the rest, save Y (the previous content, so the data file name the cleanup is about to remove)
    commits. Y's model must keep its data: Y waits for X's cleanup (held open here by pausing it in a real
    thread), so the cleanup never removes a file that the model on disk uses."""
    import threading

    from paramio.formats.onnx import external

    path = tmp_path / "m.onnx"
    y = {"a": torch.full((256,), 2.0)}
    paramio.save(y, path, external_data=True)
    in_cleanup, go_on = threading.Event(), threading.Event()
    real = external.data_files

    def paused(model: Path):
        found = real(model)
        if threading.current_thread().name == "save-x":
            in_cleanup.set()
            go_on.wait(timeout=30)
        return found

    monkeypatch.setattr(external, "data_files", paused)
    errors: list[BaseException] = []

    def save(tensors: dict) -> None:
        try:
            paramio.save(tensors, path, external_data=True)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    x_thread = threading.Thread(target=save, args=({"a": torch.full((256,), 1.0)},), name="save-x")
    x_thread.start()
    assert in_cleanup.wait(timeout=60)
    y_thread = threading.Thread(target=save, args=(y,), name="save-y")
    y_thread.start()
    y_thread.join(timeout=2)  # with the lock, Y waits here for X's cleanup
    go_on.set()
    x_thread.join(timeout=60)
    y_thread.join(timeout=60)
    assert not errors, errors
    ck = paramio.load(path)
    assert ck["a"].eq(2.0).all()
