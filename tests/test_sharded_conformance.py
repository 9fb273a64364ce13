"""Sharded folders pass the conformance suite every location passes, in both formats with a sharded layout:
the same round trips, ties, dtypes, determinism, manifest-only reads, corrupt files and atomic writes, with
checkpoints spread over several shards."""

from __future__ import annotations

from pathlib import Path

import torch

from paramio.sharding import LAYOUTS

from .conformance import FormatConformance
from .test_safetensors import TestSafetensorsConformance


class _FolderConformance(FormatConformance):
    """A folder target; shards small enough that the suite's models spread over several."""

    shards = True
    save_options = {"max_shard_size": 3000}

    def target(self, folder: Path, stem: str = "checkpoint") -> Path:
        return folder / stem

    def data_files(self, path: Path) -> list[Path]:
        """The index first, then the shards (or the single file), as a reader meets them."""
        layout = LAYOUTS[self.format or ""]
        if not path.is_dir():
            return [path]
        index = path / layout.index
        return ([index] if index.exists() else []) + sorted(p for p in path.iterdir() if p.is_file() and p != index)

    def format_class(self):  # noqa: ANN201
        from paramio.formats.registry import by_name

        return by_name(self.format or "")


class TestShardedSafetensorsConformance(_FolderConformance):
    format = "safetensors"
    suffix = ".safetensors"
    dtypes = TestSafetensorsConformance.dtypes


class TestShardedTorchConformance(_FolderConformance):
    format = "torch"
    suffix = ".bin"
    save_options = {"max_shard_size": 3000, "format": "torch"}


def test_the_suite_really_shards() -> None:
    """The suite's tiny language model spreads over three shards with the limit the classes use."""
    import tempfile

    import paramio
    from paramio.examples import tiny_lm

    with tempfile.TemporaryDirectory() as tmp:
        for cls in (TestShardedSafetensorsConformance, TestShardedTorchConformance):
            path = cls().target(Path(tmp), cls.format or "")
            paramio.save(tiny_lm(), path, **cls.save_options)
            assert len(cls().data_files(path)) == 4, cls
            assert torch.equal(paramio.load(path)["pos"], tiny_lm().pos)
