"""DCP folders pass the shared conformance suite (``paramio.save(obj, "ckpt/", format="dcp")``), with two
tests adapted to the layout: a folder whose own ``.metadata`` is a hidden file, and a failure injected in
the write of the data file (DCP folders have no format writer to break)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import paramio
from paramio.errors import FormatError
from paramio.examples import tied_mlp, tiny_lm

from .conformance import FormatConformance, partial_files


class TestDCPConformance(FormatConformance):
    format = "dcp"
    save_options: ClassVar[dict[str, Any]] = {"format": "dcp"}

    def target(self, folder: Path, stem: str = "checkpoint") -> Path:
        return folder / stem

    def test_failed_write_leaves_previous_file_untouched(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.save(tied_mlp(), path)
        before = {p: p.read_bytes() for p in self.data_files(path)}
        real_save, calls = torch.save, []

        def failing_save(obj, f, *args, **kwargs):
            calls.append(obj)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", failing_save)
        with pytest.raises(FormatError, match="No space left"):
            self.save(tiny_lm(), path)
        monkeypatch.undo()
        assert {p: p.read_bytes() for p in self.data_files(path)} == before
        for folder in (path.parent, path):  # no temporary left, hidden or not
            assert partial_files(folder) == []
        assert sorted(p.name for p in path.iterdir()) == [".metadata", "__0_0.distcp"]
        assert paramio.diff(path, paramio.collect(tied_mlp())).equal
