"""Crash-safe writes, for every format: a write killed at any moment leaves the previous checkpoint
byte-identical, its temporary is never taken for the checkpoint and the next write removes it; data is
fsynced before the rename; readers of a file being replaced see the old or the new checkpoint whole.

The writes run in forked children killed with SIGKILL: at fixed points (before the first tensor, halfway,
before the header/manifest is finished, at the first fsync, just before and just after the rename) and from
outside while the temporary file grows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import paramio
import paramio.atomic
from paramio.errors import FormatError
from paramio.formats.registry import for_path

from .reliability import SUFFIX, bits_equal, formats_present

FORMATS = formats_present()
LAYERS = 8
ELEMENTS = 1 << 20  # 8 layers of 4 MiB: a 32 MiB checkpoint


def checkpoint(version: int) -> dict[str, torch.Tensor]:
    """A model-like dict whose every value says which version it is, with a tie."""
    out = {f"layers.{i}.weight": torch.full((ELEMENTS,), float(version * 100 + i)) for i in range(LAYERS)}
    out["head.weight"] = out["layers.0.weight"]
    return out


def same_as(loaded: paramio.Checkpoint, expected: dict[str, torch.Tensor]) -> bool:
    return (set(loaded) == set(expected) and all(bits_equal(loaded[n], t) for n, t in expected.items())
            and loaded["head.weight"] is loaded["layers.0.weight"])


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".partial"))


# -- killing a write ------------------------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, path: Path) -> None:
    """In the child: SIGKILL this process when the write reaches ``point``."""
    fmt = for_path(path)
    real_writer, real_fsync, real_replace = fmt.writer, os.fsync, os.replace
    calls = {"tensor": 0, "replace": 0}

    def writer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        w = real_writer(*args, **kwargs)
        real_write, real_finish = w.write_tensor, w.finish

        def write_tensor(entry, tensor):  # noqa: ANN001, ANN202
            calls["tensor"] += 1
            if (point == "first-tensor" and calls["tensor"] == 1) or (point == "half" and calls["tensor"] == 5):
                _die()
            real_write(entry, tensor)

        def finish(manifest):  # noqa: ANN001, ANN202
            if point == "finish":
                _die()
            real_finish(manifest)

        w.write_tensor, w.finish = write_tensor, finish
        return w

    def fsync(fd: int) -> None:
        if point == "fsync":
            _die()
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        calls["replace"] += 1
        if (point == "rename" and calls["replace"] == 1) or (point == "second-rename" and calls["replace"] == 2):
            _die()
        real_replace(src, dst)
        if point == "renamed" and Path(dst) == path:  # the checkpoint itself is renamed last
            _die()

    fmt.writer = writer
    os.fsync, os.replace = fsync, replace


@contextlib.contextmanager
def child(work: Callable[[], None]) -> Iterator[int]:
    """Fork a child that runs ``work`` (exit 0) or dies; yield its pid; reap it on exit."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            torch.set_num_threads(1)
            work()
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    try:
        yield pid
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def killed_write(path: Path, tensors: dict, point: str, options: dict) -> int:
    """Save ``tensors`` to ``path`` in a child killed at ``point``; return its wait status."""
    with child(lambda: (_arm(point, path), paramio.save(tensors, path, **options))) as pid:
        _, status = os.waitpid(pid, 0)
    return status


def killed_from_outside(path: Path, tensors: dict, fraction: float, options: dict) -> int:
    """Save in a child; SIGKILL it once its temporary holds ``fraction`` of the previous file's size."""
    target = path.stat().st_size * fraction
    with child(lambda: paramio.save(tensors, path, **options)) as pid:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            sizes = [p.stat().st_size for p in partials(path.parent) if p.exists()]
            if any(s >= target for s in sizes):
                os.kill(pid, signal.SIGKILL)
                return os.waitpid(pid, 0)[1]
            time.sleep(0.0002)
        os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]


POINTS = ["first-tensor", "half", "finish", "fsync", "rename", "renamed"]
CASES = [pytest.param(fmt, {}, point, id=f"{fmt}-{point}") for fmt in FORMATS for point in POINTS]
if "onnx" in FORMATS:
    external = {"external_data": True}
    CASES += [pytest.param("onnx", external, point, id=f"onnx-external-{point}")
              for point in [*POINTS, "second-rename"]]


@pytest.mark.parametrize("fmt, options, point", CASES)
def test_a_write_killed_at_any_point_leaves_the_previous_file_whole(tmp_path: Path, fmt: str, options: dict,
                                                                    point: str) -> None:
    path = tmp_path / f"model{SUFFIX[fmt]}"
    old, new, later = checkpoint(1), checkpoint(2), checkpoint(3)
    paramio.save(old, path, **options)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}

    status = killed_write(path, new, point, options)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the write was not killed: {status}"
    if point == "renamed":
        assert same_as(paramio.load(path), new)
    else:
        assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.name in before} == before
        assert same_as(paramio.load(path), old)
    # Past "fsync" every format has written its temporary; before, some have not opened it yet.
    _later_write_cleans_up(path, later, options, expect_leftovers=point in ("fsync", "rename", "second-rename"))


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.97], ids=lambda f: f"at-{int(f * 100)}pct")
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_write_killed_from_outside_leaves_the_old_or_the_new_file_whole(tmp_path: Path, fmt: str,
                                                                          fraction: float) -> None:
    path = tmp_path / f"model{SUFFIX[fmt]}"
    old, new = checkpoint(1), checkpoint(2)
    paramio.save(old, path)
    before = _digest(path)
    status = killed_from_outside(path, new, fraction, {})
    loaded = paramio.load(path)
    if os.WIFSIGNALED(status):
        assert _digest(path) == before or same_as(loaded, new)
    else:
        assert os.WEXITSTATUS(status) == 0 and same_as(loaded, new)
    assert same_as(loaded, old) or same_as(loaded, new)
    _later_write_cleans_up(path, checkpoint(3), {}, expect_leftovers=False)


def _digest(path: Path) -> str:
    """Compare files by digest: a failed ``==`` on megabytes of bytes makes pytest diff them for minutes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _later_write_cleans_up(path: Path, tensors: dict, options: dict, *, expect_leftovers: bool) -> None:
    """Leftover temporaries are never read as the checkpoint; the next write succeeds and removes them."""
    leftovers = partials(path.parent)
    if expect_leftovers:
        assert leftovers, "a killed write before the rename leaves its temporary (it cannot remove it)"
    for temp in leftovers:
        assert temp.name.startswith(".")
        with pytest.raises(FormatError, match="unknown suffix"):
            paramio.load(temp)
    paramio.save(tensors, path, **options)
    assert same_as(paramio.load(path), tensors)
    assert partials(path.parent) == []


def test_temporaries_of_live_writers_and_other_files_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    host = paramio.atomic._HOST
    live = tmp_path / f".model.safetensors.{host}-{os.getpid()}-{'a' * 32}.partial"
    other_host = tmp_path / f".model.safetensors.{'0' * 8 if host != '0' * 8 else '1' * 8}-999999999-{'b' * 32}.partial"
    other_file = tmp_path / f".other.safetensors.{host}-999999999-{'c' * 32}.partial"
    dead = tmp_path / f".model.safetensors.{host}-999999999-{'d' * 32}.partial"
    for p in (live, other_host, other_file, dead):
        p.write_bytes(b"partial")
    assert paramio.atomic.remove_stale(path) == [dead]
    assert partials(tmp_path) == sorted([live, other_host, other_file])


# -- fsync before rename --------------------------------------------------------------------------------------


FSYNC_CASES = [pytest.param(fmt, {}, id=fmt) for fmt in FORMATS]
FSYNC_CASES += [pytest.param("onnx", {"external_data": True}, id="onnx-external")] if "onnx" in FORMATS else []


@pytest.mark.parametrize("fmt, options", FSYNC_CASES)
def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path, fmt: str, options: dict,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    paramio.save(checkpoint(1), tmp_path / f"m{SUFFIX[fmt]}", **options)
    renamed = [p for kind, p in events if kind == "replace"]
    assert renamed, events
    for temp in renamed:
        first_rename = events.index(("replace", renamed[0]))
        assert ("fsync", temp) in events[:first_rename], f"{temp} renamed before it was fsynced: {events}"
    assert events[-1] == ("fsync", str(tmp_path)), "the folder is fsynced after the renames"


@pytest.mark.parametrize("fmt, options", FSYNC_CASES)
def test_durable_false_skips_the_fsyncs_but_still_replaces_the_file_whole(tmp_path: Path, fmt: str, options: dict,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"m{SUFFIX[fmt]}"
    paramio.save(checkpoint(1), path, **options)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    paramio.save(checkpoint(2), path, durable=False, **options)
    assert synced == []
    assert same_as(paramio.load(path), checkpoint(2)) and partials(tmp_path) == []
    # a write that fails at its very end (the rename) leaves the previous file as it was, and no temporary
    before = path.read_bytes()

    def refuse(src, dst) -> None:  # noqa: ANN001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    for durable in (False, True):
        with pytest.raises(FormatError, match="No space left"):
            paramio.save(checkpoint(3), path, durable=durable, **options)
        assert path.read_bytes() == before and partials(tmp_path) == []


def test_convert_and_the_cli_take_durable_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from paramio.cli import app

    src = tmp_path / "m.safetensors"
    paramio.save(checkpoint(1), src)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    paramio.convert(src, tmp_path / "m.h5", durable=False)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "m.pt"), "--no-durable"])
    assert result.exit_code == 0, result.output
    assert synced == []
    assert same_as(paramio.load(tmp_path / "m.h5"), checkpoint(1)) and same_as(paramio.load(tmp_path / "m.pt"),
                                                                                checkpoint(1))
    result = CliRunner().invoke(app, ["export", str(src), "-o", str(tmp_path / "e.onnx"), "--no-durable"])
    assert result.exit_code == 0 and synced == [], result.output
    assert same_as(paramio.load(tmp_path / "e.onnx"), checkpoint(1))
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "again.pt")])
    assert result.exit_code == 0 and synced, "durable is the default"


# -- concurrent readers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reader_reads_the_file_it_opened_even_if_it_is_replaced(tmp_path: Path, fmt: str) -> None:
    from paramio.locations import open_source

    path = tmp_path / f"model{SUFFIX[fmt]}"
    old, new = checkpoint(1), checkpoint(2)
    paramio.save(old, path)
    with open_source(path) as source:
        manifest = source.manifest()
        paramio.save(new, path)  # atomically replaces the file under the open reader
        read = {e.name: source.read_entry(e, verify=True) for e in manifest.tensors}
    assert all(bits_equal(read[n], old[n]) for n in read)
    assert same_as(paramio.load(path), new)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_replaced_as_it_is_mapped_gives_the_reader_the_file_it_opened(tmp_path: Path, fmt: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The race made deterministic: the file is replaced just before any mapping by name."""
    path = tmp_path / f"model{SUFFIX[fmt]}"
    old, new = checkpoint(1), checkpoint(2)
    paramio.save(old, path)
    real = torch.UntypedStorage.from_file
    replaced = []

    def from_file(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not replaced:
            replaced.append(True)
            paramio.save(new, path)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "from_file", from_file)
    loaded = paramio.load(path)
    assert same_as(loaded, old) or (not replaced and same_as(loaded, new))


# The same race, left to chance.
@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_of_a_file_being_replaced_see_the_old_or_the_new_file_whole(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"model{SUFFIX[fmt]}"
    versions = [{f"t{i}": torch.full((1 << 16,), float(v * 10 + i)) for i in range(4)} for v in range(2)]
    paramio.save(versions[0], path)

    stop = tmp_path / "stop"

    def rewrite() -> None:  # alternate the versions until the reader is done
        deadline, i = time.monotonic() + 120, 0
        while not stop.exists() and time.monotonic() < deadline:
            paramio.save(versions[i % 2], path)
            i += 1

    with child(rewrite) as pid:
        for n in range(20):
            assert os.waitpid(pid, os.WNOHANG)[0] == 0, "the writer stopped before the reader was done"
            ck = paramio.load(path)  # never an error, never a mix
            assert any(set(ck) == set(v) and all(bits_equal(ck[k], t) for k, t in v.items()) for v in versions), \
                f"load {n} saw a mix of versions"
        stop.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the writer failed"
