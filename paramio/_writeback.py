"""Starting the kernel's write-out of a file while it is still being written.

paramio fsyncs every file before renaming it into place (a crash never leaves a torn checkpoint). Written
first and synced at the end, the data would reach the disk only after the last byte is copied: the save
would take the copy time plus the disk time. Asking the kernel, every few megabytes, to start writing out
what is dirty so far (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait for the disk)
overlaps the two, so the final fsync only waits for the tail. Linux only; elsewhere this does nothing and
the fsync does all the work, as before. No thread: a thread would cost each process a malloc arena's
worth of address space, which matters under RLIMIT_AS.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["Writeback"]

_SYNC_FILE_RANGE_WRITE = 2
#: Start a write-out after this many bytes were written since the last one.
_STEP = 8 << 20


def _sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_FUNC = _sync_file_range()


class Writeback:
    """Call :meth:`wrote` after each piece of data given to the writer of ``path``; :meth:`close` at the
    end. The file is opened (read-only, for its page cache) on the first write-out."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1
        self._pending = 0
        self._enabled = _FUNC is not None

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if not self._enabled or self._pending < _STEP:
            return
        self._pending = 0
        if self._fd < 0:
            try:
                self._fd = os.open(self._path, os.O_RDONLY)
            except OSError:
                return  # not created yet (some writers create their file at the end)
        if _FUNC(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
            self._enabled = False  # not supported here: the final fsync does all the work

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
