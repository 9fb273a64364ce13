"""Writes under faults and to odd destinations (issue 14, "Writes under faults", "Destinations that are not
regular files", "File names", "Save must never write what load refuses"): a full file system or a file-size
limit gives a paramio error naming the file, the previous checkpoint stays whole and no temporary is left;
a device node, a FIFO or a directory is refused, never replaced; a name near NAME_MAX saves in every format;
and a manifest that reading would refuse is refused at save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import paramio
from paramio import limits
from paramio.errors import FormatError
from paramio.examples import tiny_lm

FORMATS = ("safetensors", "h5", "onnx", "pt")
ROOT = Path(__file__).resolve().parent.parent


def previous_and_bigger():
    """A small checkpoint already on disk, and a larger one whose write will not fit."""
    return {"w": torch.arange(4.0)}, {"w": torch.ones(4), "big": torch.zeros(1 << 20)}


def assert_previous_whole(folder: Path, path: Path, previous) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary, no data file left
    ck = paramio.load(path)
    assert list(ck) == ["w"] and torch.equal(ck["w"], previous["w"])


_EFBIG = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    warnings.simplefilter("ignore")
    import torch, paramio
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
    out = {}
    for path in sys.argv[1:]:
        paramio.save({"w": torch.arange(4.0)}, path)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
        try:
            paramio.save({"w": torch.ones(4), "big": torch.zeros(1 << 20)}, path)
            out[path] = ["saved", ""]
        except Exception as e:
            out[path] = [f"{type(e).__module__}.{type(e).__name__}", str(e)]
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def efbig(tmp_path_factory):
    """One process (a file-size limit is per process) writing each format past RLIMIT_FSIZE: path -> outcome."""
    folders = {suffix: tmp_path_factory.mktemp(f"efbig-{suffix}") for suffix in FORMATS}
    paths = [str(folders[suffix] / f"m.{suffix}") for suffix in FORMATS]
    done = subprocess.run([sys.executable, "-c", _EFBIG, *paths], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_write_over_the_file_size_limit_fails_cleanly_and_keeps_the_previous_file(efbig, suffix):
    path = next(Path(p) for p in efbig if p.endswith(f".{suffix}"))
    kind, message = efbig[str(path)]
    assert kind == "paramio.errors.FormatError"
    assert message.startswith(f"{path}: cannot write") and message.endswith("File too large")
    assert_previous_whole(path.parent, path, {"w": torch.arange(4.0)})


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs (root only, as in CI); skipped where this process may not mount."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_write_to_a_full_file_system_fails_cleanly_and_keeps_the_previous_file(small_fs, suffix):
    previous, bigger = previous_and_bigger()
    path = small_fs / f"m.{suffix}"
    paramio.save(previous, path)
    with pytest.raises(FormatError, match=rf"^{path}: cannot write.*No space left on device"):
        paramio.save(bigger, path)
    assert_previous_whole(small_fs, path, previous)


def test_an_onnx_graph_with_external_data_to_a_full_file_system_leaves_no_data_file(small_fs):
    previous, bigger = previous_and_bigger()
    path = small_fs / "m.onnx"
    paramio.save(previous, path, external_data=True)
    data = sorted(p.name for p in small_fs.iterdir())
    with pytest.raises(FormatError, match="No space left on device"):
        paramio.save(bigger, path, external_data=True)
    assert sorted(p.name for p in small_fs.iterdir()) == data
    assert torch.equal(paramio.load(path)["w"], previous["w"])


# -- destinations that are not regular files ----------------------------------------------------------------
def test_an_onnx_model_with_external_data_aimed_at_a_directory_leaves_nothing(tmp_path):
    """An existing folder is a sharded-folder destination (DESIGN), which ONNX has not: refused, nothing written."""
    path = tmp_path / "out.onnx"
    path.mkdir()
    with pytest.raises(FormatError, match=r"out.onnx: an existing folder, which save writes as a sharded "):
        paramio.save(tiny_lm(), path, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name] and list(path.iterdir()) == []


def test_a_directory_given_as_a_file_destination_is_refused_before_writing(tmp_path):
    """Below the location layer (a writer's own second file, such as ONNX external data), the staging refuses
    a directory in the way instead of failing at the rename after writing everything."""
    from paramio.atomic import Staging

    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(FormatError, match="m.onnx.data: a directory, not a regular file"):
        Staging().temp_for(tmp_path / "m.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.data"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_fifo_as_the_destination_is_refused_not_replaced(tmp_path, suffix):
    path = tmp_path / f"pipe.{suffix}"
    os.mkfifo(path)
    with pytest.raises(FormatError, match=rf"{path}: a FIFO \(named pipe\), not a regular file"):
        paramio.save(tiny_lm(), path)
    assert path.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_device_node_as_the_destination_is_refused_not_replaced(tmp_path):
    link = tmp_path / "null.safetensors"  # /dev/null under a name with a format's suffix
    link.symlink_to("/dev/null")
    with pytest.raises(FormatError, match="a device, not a regular file"):
        paramio.save(tiny_lm(), link)
    with pytest.raises(FormatError, match="a device, not a regular file"):
        paramio.save(tiny_lm(), link, format="safetensors")
    assert link.is_symlink() and Path("/dev/null").is_char_device()
    paramio.save(tiny_lm(), tmp_path / "m.h5")
    with pytest.raises(FormatError, match="a device"):
        paramio.convert(tmp_path / "m.h5", link)


def test_a_fifo_destination_is_refused_without_blocking(tmp_path):
    """Nothing opens the FIFO (an open for writing would wait for a reader forever)."""
    path = tmp_path / "pipe.pt"
    os.mkfifo(path)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_refused(path)), daemon=True)
    worker.start()
    worker.join(60)
    assert outcome == [True]


def _refused(path: Path) -> bool:
    try:
        paramio.save({"w": torch.ones(2)}, path)
    except FormatError:
        return True
    return False


# -- file names near NAME_MAX -----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_file_name_at_name_max_saves_and_loads_in_every_format(tmp_path, suffix):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("n" * (name_max - len(suffix) - 1) + f".{suffix}")
    model = tiny_lm()
    paramio.save(model, path)
    paramio.save(model, path)  # again, over the first
    ck = paramio.load(path)
    assert ck["head.weight"] is ck["embed.weight"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_an_onnx_file_with_external_data_at_name_max_saves_and_loads(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("n" * (name_max - 5) + ".onnx")
    model = tiny_lm()
    paramio.save(model, path, external_data=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all(len(n.encode()) <= name_max for n in names)
    ck = paramio.load(path)
    assert torch.equal(ck["embed.weight"], model.embed.weight)
    paramio.save({"w": torch.ones(2)}, path, external_data=True)  # a new version replaces the data file
    assert len(list(tmp_path.iterdir())) == 2


# -- save never writes what load refuses --------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_manifest_longer_than_the_read_cap_is_refused_at_save(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", 20_000)
    path = tmp_path / f"m.{suffix}"
    with pytest.raises(FormatError, match=r"manifest would be \d+ characters, more than the cap of 20000"):
        paramio.save({"w": torch.ones(2)}, path, metadata={"notes": "x" * 30_000})
    assert list(tmp_path.iterdir()) == []
    paramio.save({"w": torch.ones(2)}, path, metadata={"notes": "x" * 15_000})  # under the cap: reads back
    assert len(paramio.load(path).metadata["notes"]) == 15_000


def test_more_tensors_than_the_read_cap_are_refused_at_save(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TENSORS", 3)
    with pytest.raises(FormatError, match="4 tensors, more than the cap of 3"):
        paramio.save({f"t{i}": torch.ones(1) for i in range(4)}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_header_over_the_readers_cap_is_refused_at_save(tmp_path, monkeypatch):
    import paramio.formats.safetensors as st

    monkeypatch.setattr(st, "HEADER_CAP", 4_000)
    with pytest.raises(FormatError, match="safetensors header would be \\d+ bytes, over the cap of 4000"):
        paramio.save({f"t{i}": torch.ones(1) for i in range(40)}, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
