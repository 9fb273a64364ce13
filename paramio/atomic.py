"""Crash-safe writes: every output is written under a temporary name in its own folder, fsynced, then
renamed over the target, so a failed or killed write never leaves a partial file nor clobbers the previous
one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Staging", "staged"]


class Staging:
    """Temporary names for one write's files (a model and, for ONNX, its external data), committed together."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        final = Path(final)
        temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
        self._pending.append((temp, final))
        return temp

    def commit(self) -> None:
        """fsync each file, rename in order (the main file last), then fsync the folders."""
        folders = set()
        for temp, _ in self._pending:
            if temp.exists():
                with open(temp, "rb+") as fh:
                    os.fsync(fh.fileno())
        for temp, final in reversed(self._pending):
            if temp.exists():
                os.replace(temp, final)
                folders.add(final.parent)
        for folder in folders:
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._pending.clear()

    def rollback(self) -> None:
        for temp, _ in self._pending:
            with contextlib.suppress(OSError):
                temp.unlink()
        self._pending.clear()


@contextlib.contextmanager
def staged() -> Iterator[Staging]:
    """Yield a :class:`Staging`; commit on success, remove every temporary file on any failure."""
    staging = Staging()
    try:
        yield staging
    except BaseException:
        staging.rollback()
        raise
    staging.commit()
