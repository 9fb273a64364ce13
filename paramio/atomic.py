"""Crash-safe writes: every output is written under a temporary name in its own folder, fsynced, then
renamed over the target, so a failed or killed write never leaves a partial file nor clobbers the previous
one.

The fsync is what makes that hold through a power loss or a kernel crash too (without it, a file system may
persist the rename before the data, leaving an empty or torn file where the previous checkpoint was). It
costs the time the disk takes to store the bytes, which tools that leave their data in the page cache do
not wait for; ``durable=False`` skips it where only process failures matter (scratch space, tmpfs).

A temporary is named ``.<name>.<host>-<pid>-<uuid>.partial``: no reader takes it for the checkpoint (a
hidden name whose suffix names no format); a name too long for that keeps its start and a hash of the whole
(:func:`temp_stem`). A destination that exists and is not a regular file (a directory, a FIFO, a device
node) is refused before anything is written. A write that is killed (SIGKILL, power loss) cannot remove its
own; the next write of the same file removes those whose process is gone on this machine
(:func:`remove_stale`), and leaves alone those of live writers and of other machines sharing the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import FormatError

__all__ = ["Staging", "staged", "remove_stale", "temp_stem", "check_destination"]

_HOST = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists
        return True
    return True


#: Bytes a temporary's name adds to its stem: ``.`` + ``.<host>-<pid>-<uuid>.partial`` (a pid of up to 10 digits).
_ADDED = 1 + len(f".{_HOST}-{'9' * 10}-{'0' * 32}.partial")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def temp_stem(final: Path) -> str:
    """The part of a temporary's name that comes from ``final``'s: the name itself, or, when the temporary
    would not fit the folder's NAME_MAX, its start and a hash of the whole name (a checkpoint named near the
    limit is still writable, and the same final name always gives the same stem, for :func:`remove_stale`)."""
    name = final.name
    room = _name_max(final.parent) - _ADDED
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= room:
        return name
    digest = hashlib.blake2s(encoded, digest_size=8).hexdigest()
    head = encoded[: max(room - len(digest) - 1, 1)].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def check_destination(final: Path) -> None:
    """Refuse a destination that is not a regular file: a write renames a new file over it, which would
    replace a directory entry such as ``/dev/null`` or a FIFO with a file (or fail on a directory after
    writing everything)."""
    try:
        mode = os.stat(final).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a name only staged under (ONNX data): nothing there to replace
            return
        raise FormatError(f"{final}: cannot write there: {e.strerror or e}") from e
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    raise FormatError(f"{final}: {kind}, not a regular file; paramio writes a checkpoint by renaming a new file "
                      "over the old one, which would replace it. Give a file path")


def remove_stale(final: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes of ``final`` on this machine left beside it (their process
    is gone); return what was removed. Writes call it for their own target; it is safe to call any time."""
    final = Path(final)
    stem = re.escape(temp_stem(final))
    pattern = re.compile(rf"\.{stem}\.([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{32}}\.partial")
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) == _HOST and not _alive(int(match.group(2))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


class Staging:
    """Temporary names for one write's files (a model and, for ONNX, its external data), committed together."""

    def __init__(self, durable: bool = True) -> None:
        self.durable = durable
        self._synced: set[str] = set()
        self._pending: list[tuple[Path, Path]] = []
        self._after: list[Callable[[], None]] = []
        self._holds: list[contextlib.AbstractContextManager[object]] = []
        self._folders: list[Path] = []

    def make_folder(self, folder: Path) -> None:
        """Create ``folder`` (and its parents) for a write of several files; a failed write removes the folders
        it created (when they are empty again), so that it leaves nothing behind."""
        missing = []
        for parent in (Path(folder), *Path(folder).parents):
            if parent.exists():
                break
            missing.append(parent)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._folders.extend(missing)

    def temp_for(self, final: Path) -> Path:
        """A temporary name beside ``final``, committed over it; refuses a ``final`` that is not a file."""
        final = Path(final)
        check_destination(final)
        remove_stale(final)
        temp = final.with_name(f".{temp_stem(final)}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex}.partial")
        self._pending.append((temp, final))
        return temp

    def sync(self, fh: IO[bytes]) -> None:
        """Flush ``fh`` to the disk before it is closed (when durable): a writer that syncs its own file
        saves :meth:`commit` reopening it."""
        fh.flush()
        if self.durable:
            os.fsync(fh.fileno())
            self._synced.add(os.fspath(fh.name))

    def retarget(self, temp: Path, final: Path) -> None:
        """Commit ``temp`` under ``final`` instead: for a name known only once the file is written (ONNX
        names its external data by content). The temporary keeps its name, so :func:`remove_stale` of the
        first target still finds it after a kill."""
        self._pending = [(t, Path(final) if t == temp else f) for t, f in self._pending]

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the files are renamed and the folders fsynced (e.g. removing files the new
        version no longer uses); best effort: an OSError it raises is ignored, the write stands."""
        self._after.append(action)

    def hold(self, guard: contextlib.AbstractContextManager[object]) -> None:
        """Enter ``guard`` (a lock) before the renames and leave it after the after-commit actions."""
        self._holds.append(guard)

    def commit(self) -> None:
        """fsync each file, rename in order (the main file last), then fsync the folders (without the fsyncs
        when not durable); inside the guards given to :meth:`hold`."""
        with contextlib.ExitStack() as stack:
            for guard in self._holds:
                stack.enter_context(guard)
            self._holds = []
            self._commit()

    def _commit(self) -> None:
        folders = set()
        for temp, _ in self._pending:
            if self.durable and os.fspath(temp) not in self._synced and temp.exists():
                with open(temp, "rb+") as fh:
                    os.fsync(fh.fileno())
        for temp, final in reversed(self._pending):
            if temp.exists():
                os.replace(temp, final)
                folders.add(final.parent)
        for folder in folders if self.durable else ():
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._pending.clear()
        self._folders.clear()
        after, self._after = self._after, []
        for action in after:
            with contextlib.suppress(OSError):
                action()

    def rollback(self) -> None:
        for temp, _ in self._pending:
            with contextlib.suppress(OSError):
                temp.unlink()
        for folder in self._folders:  # deepest first; one that holds anything else stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._pending.clear()
        self._after.clear()
        self._holds.clear()
        self._folders.clear()


@contextlib.contextmanager
def staged(durable: bool = True) -> Iterator[Staging]:
    """Yield a :class:`Staging`; commit on success, remove every temporary file on any failure."""
    staging = Staging(durable)
    try:
        yield staging
        staging.commit()  # a rename that fails (a full disk, a vanished folder) removes the temporaries too
    except BaseException:
        staging.rollback()
        raise
