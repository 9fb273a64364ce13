"""Starting the kernel's write-out of a file while it is still being written.

paramio fsyncs every file before renaming it into place (a crash never leaves a torn checkpoint). Written
first and synced at the end, the data would reach the disk only after the last byte is copied: the save
would take the copy time plus the disk time. A background thread that asks the kernel every few
milliseconds to start writing out what is dirty so far (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which
does not wait for the disk) overlaps the two, so the final fsync only waits for the last few megabytes.
Linux only; elsewhere this does nothing and the fsync does all the work, as before.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["Writeback"]

_SYNC_FILE_RANGE_WRITE = 2
_INTERVAL = 0.01


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
    """``start(path)`` keeps starting the write-out of ``path``'s dirty pages (once the file exists) until
    ``stop()``; both are safe to call when the other was not."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, path: Path) -> None:
        if _FUNC is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(path,), name="paramio-writeback", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self, path: Path) -> None:
        fd = -1
        try:
            while not self._stop.wait(_INTERVAL):
                if fd < 0:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except OSError:
                        continue  # not created yet (some writers create their file at the end)
                if _FUNC(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
                    return  # not supported here: the final fsync does all the work
        finally:
            if fd >= 0:
                os.close(fd)
