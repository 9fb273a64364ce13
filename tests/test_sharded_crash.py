"""Crash-safe sharded folders: a save or convert killed (SIGKILL) at every stage leaves a folder whose index
names a complete set of shards (the previous checkpoint before the commit, the new one after it), also when
the new shards reuse the previous ones' names, and the next save removes what the killed one left."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import paramio
from paramio.formats.registry import by_name

from .reliability import bits_equal
from .test_crash_safety import _die, child

LAYERS = 6
ELEMENTS = 1 << 16  # 256 KiB a layer: one layer a shard with the limit below
LIMIT = 300_000


def checkpoint(version: int, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    out = {f"layers.{i}.weight": torch.full((ELEMENTS,), float(version * 100 + i)) for i in range(layers)}
    out["head.weight"] = out["layers.0.weight"]
    return out


def same_as(loaded: paramio.Checkpoint, expected: dict[str, torch.Tensor]) -> bool:
    return (set(loaded) == set(expected) and all(bits_equal(loaded[n], t) for n, t in expected.items())
            and loaded["head.weight"] is loaded["layers.0.weight"])


#: Where a sharded write is killed, in the order it reaches them.
POINTS = ["first-shard", "between-shards", "before-index", "index", "final-names", "final-index", "cleanup"]
#: The points at which the new index is already in place.
COMMITTED = {"index", "final-names", "final-index", "cleanup"}


def _arm(point: str, folder: Path, fmt: str) -> None:
    """In the child: SIGKILL this process when the write reaches ``point``."""
    index = folder / ("model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json")
    format_ = by_name(fmt)
    real_writer, real_replace, real_unlink, real_link = format_.writer, os.replace, os.unlink, os.link
    calls = {"writer": 0, "index": 0}

    def writer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["writer"] += 1
        if (point == "first-shard" and calls["writer"] == 1) or (point == "between-shards" and calls["writer"] == 2):
            _die()
        return real_writer(*args, **kwargs)

    def replace(src, dst) -> None:  # noqa: ANN001
        if Path(dst) == index:
            calls["index"] += 1
            if point == "before-index" and calls["index"] == 1:
                _die()
        elif point == "final-names" and calls["index"] == 1 and not Path(dst).name.startswith("."):
            _die()
        real_replace(src, dst)
        if Path(dst) == index and ((point == "index" and calls["index"] == 1)
                                   or (point == "final-index" and calls["index"] == 2)):
            _die()

    def unlink(path, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        if point == "cleanup" and calls["index"] == 2:
            _die()
        real_unlink(path, *args, **kwargs)

    format_.writer = writer  # type: ignore[method-assign]
    os.replace, os.unlink, os.link = replace, unlink, real_link


def killed(work, point: str, folder: Path, fmt: str) -> int:  # noqa: ANN001
    with child(lambda: (_arm(point, folder, fmt), work())) as pid:
        _, status = os.waitpid(pid, 0)
    return status


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _check_after_kill(folder: Path, status: int, point: str, old: dict, new: dict, fmt: str) -> None:
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {point}: {status}"
    loaded = paramio.load(folder)
    assert same_as(loaded, new if point in COMMITTED else old), point
    assert paramio.read_manifest(folder) is not None
    # the next save cleans up: only the new index and its shards remain, nothing hidden, no temporary
    later = checkpoint(3)
    paramio.save(later, f"{folder}/", format=fmt, max_shard_size=LIMIT)
    assert same_as(paramio.load(folder), later)
    names = sorted(os.listdir(folder))
    assert names == visible(folder), names
    assert paramio.validate(folder).ok, paramio.validate(folder).problems


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
@pytest.mark.parametrize("point", POINTS)
def test_a_sharded_save_killed_at_any_stage_leaves_a_whole_checkpoint(tmp_path: Path, point: str, fmt: str) -> None:
    folder = tmp_path / "ckpt"
    old, new = checkpoint(1), checkpoint(2)
    paramio.save(old, f"{folder}/", format=fmt, max_shard_size=LIMIT)
    before = visible(folder)
    assert len(before) == LAYERS + 1  # the new write reuses every one of these names
    status = killed(lambda: paramio.save(new, f"{folder}/", format=fmt, max_shard_size=LIMIT), point, folder, fmt)
    if point not in COMMITTED:
        assert visible(folder) == before
    _check_after_kill(folder, status, point, old, new, fmt)


@pytest.mark.parametrize("point", ["between-shards", "before-index", "index", "final-index", "cleanup"])
def test_a_sharded_convert_killed_at_any_stage_leaves_a_whole_checkpoint(tmp_path: Path, point: str) -> None:
    folder = tmp_path / "ckpt"
    old, new = checkpoint(1, layers=LAYERS + 2), checkpoint(2)  # more shards before: stale ones to remove
    paramio.save(old, f"{folder}/", max_shard_size=LIMIT)
    src = tmp_path / "new.safetensors"
    paramio.save(new, src)
    status = killed(lambda: paramio.convert(src, f"{folder}/", max_shard_size=LIMIT), point, folder, "safetensors")
    _check_after_kill(folder, status, point, old, new, "safetensors")


def test_at_every_moment_the_index_in_place_names_a_complete_set_of_shards(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the folder at every rename, link and unlink of a same-names re-save: always old or new, whole."""
    folder = tmp_path / "ckpt"
    old, new = checkpoint(1), checkpoint(2)
    paramio.save(old, f"{folder}/", max_shard_size=LIMIT)
    seen: list[str] = []

    def check() -> None:
        loaded = paramio.load(folder)
        seen.append("old" if same_as(loaded, old) else "new" if same_as(loaded, new) else "mixed")

    real_replace, real_unlink = os.replace, os.unlink
    monkeypatch.setattr(os, "replace", lambda s, d: (check(), real_replace(s, d), check()))
    monkeypatch.setattr(os, "unlink", lambda p, *a, **k: (check(), real_unlink(p, *a, **k), check()))
    paramio.save(new, f"{folder}/", max_shard_size=LIMIT)
    monkeypatch.undo()
    assert "mixed" not in seen and seen[0] == "old" and seen[-1] == "new"
    assert seen.index("new") > 0 and "old" not in seen[seen.index("new"):]


def test_readers_of_a_folder_being_replaced_see_the_old_or_the_new_checkpoint_whole(tmp_path: Path) -> None:
    """A writer alternates two versions of a sharded folder (same shard names) while a reader loads it."""
    folder = tmp_path / "ckpt"
    versions = [checkpoint(v, layers=3) for v in range(2)]
    paramio.save(versions[0], f"{folder}/", max_shard_size=LIMIT)
    stop = tmp_path / "stop"

    def rewrite() -> None:
        import time

        deadline, i = time.monotonic() + 120, 1
        while not stop.exists() and time.monotonic() < deadline:
            paramio.save(versions[i % 2], f"{folder}/", max_shard_size=LIMIT, durable=False)
            i += 1

    with child(rewrite) as pid:
        for n in range(15):
            assert os.waitpid(pid, os.WNOHANG)[0] == 0, "the writer stopped before the reader was done"
            loaded = paramio.load(folder)  # never an error, never a mix
            assert any(same_as(loaded, v) for v in versions), f"load {n} saw a mix of versions"
        stop.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the writer failed"
