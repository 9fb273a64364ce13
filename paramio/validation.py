"""Signatures and validation: does a checkpoint hold what a model (or a saved signature) expects, and is
the file whole?"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
from torch import nn

from . import limits
from .audit import Audit, as_loaded, audit_stored, digest_candidates
from .checkpoint import collect
from .checksum import digest, tensor_bytes
from .errors import FormatError, MissingFileError, ParamioError
from .locations import open_source
from .manifest import Manifest, Signature
from .stats import nonfinite_counts
from .stored import Stored
from .ties import tie_differences, tie_partition

__all__ = ["Report", "signature", "compare_signatures", "validate", "load_signature"]


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`validate`: ``ok`` when ``problems`` is empty. ``notes`` are findings that do
    not stop a load (the tie audit's suspected, restorable and dropped ties); ``audit`` holds them all."""

    path: str
    problems: tuple[str, ...] = field(default=())
    manifest: Manifest | None = None
    notes: tuple[str, ...] = field(default=())
    audit: Audit | None = None
    nonfinite: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (NaN, +Inf, -Inf)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_signature(path: str | Path) -> Signature:
    """A signature saved as JSON (``paramio signature -o``). The file is checked by type and size before it
    is read: a FIFO would block the read forever, and a signature is no larger than a manifest
    (``limits.MAX_MANIFEST_BYTES``), so a 10 GB file is refused instead of read whole."""
    path = Path(path)
    try:
        return Signature.from_json(_read_bounded(path, limits.MAX_MANIFEST_BYTES))
    except FileNotFoundError as e:
        raise MissingFileError(path) from e
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    except pydantic.ValidationError as e:
        raise FormatError(f"{path}: not a paramio signature: {e.errors()[0]['msg']}") from e


def _read_bounded(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes, opened without blocking (a FIFO's open waits for
    a writer) and checked before any byte is read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)"
                    if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                    or stat.S_ISBLK(info.st_mode) else "not a regular file")
            raise FormatError(f"{path}: {kind}, not a signature file; give the path of a JSON file written by "
                              "`paramio signature -o`")
        if info.st_size > cap:
            raise FormatError(f"{path}: {info.st_size} bytes, more than the cap of {cap} for a signature "
                              "(a signature is no larger than a manifest); refused before reading it")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(cap + 1)
        if len(data) > cap:  # grew since the check
            raise FormatError(f"{path}: more than the cap of {cap} bytes for a signature")
        return data
    finally:
        os.close(fd)


def signature(model_or_path: nn.Module | str | Path | Signature) -> Signature:
    """The identity of a model or checkpoint file: names, dtypes, shapes, kinds, views and ties.

    A ``.json`` path (other than a sharded folder's ``*.index.json``) is read as a saved signature.
    """
    if isinstance(model_or_path, Signature):
        return model_or_path
    if isinstance(model_or_path, nn.Module):
        return collect(model_or_path).manifest.signature()
    name = Path(model_or_path).name.lower()
    if name.endswith(".json") and not name.endswith(".index.json"):
        return load_signature(model_or_path)
    with open_source(model_or_path) as source:
        return source.manifest().signature()


def compare_signatures(expected: Signature, actual: Signature, *, kinds: bool = True) -> list[str]:
    """Every difference of names, dtypes, shapes, kinds and ties, as one line each."""
    problems: list[str] = []
    want, have = expected.shapes(), actual.shapes()
    for name, (dtype, shape) in want.items():
        if name not in have:
            problems.append(f"tensor `{name}`: missing (expected {dtype}{list(shape)})")
        elif have[name] != (dtype, shape):
            got = have[name]
            problems.append(f"tensor `{name}`: {got[0]}{list(got[1])}, expected {dtype}{list(shape)}")
    problems += [f"tensor `{n}`: unexpected" for n in have if n not in want]
    if kinds:
        want_kind = {t.name: t.kind for t in expected.tensors}
        for t in actual.tensors:
            if t.name in want_kind and want_kind[t.name] != t.kind:
                problems.append(f"tensor `{t.name}`: a {t.kind}, expected a {want_kind[t.name]}")
    for name, a, b in tie_differences(tie_partition(want, expected.ties), tie_partition(have, actual.ties)):
        problems.append(f"ties of `{name}`: expected {{{', '.join(sorted(a))}}}, found {{{', '.join(sorted(b))}}}")
    return problems


def _against(against: object) -> Signature:
    if isinstance(against, (nn.Module, Signature)):
        return signature(against)
    if isinstance(against, (str, Path)):
        return signature(against)
    raise TypeError(f"against= takes a model, a Signature or a signature JSON path, not {type(against).__name__}")


def validate(path: str | Path, against: nn.Module | Signature | str | Path | None = None, *,
             verify: bool = True, finite: bool = False) -> Report:
    """Check a file whole: manifest schema, file vs manifest, checksums, the tie audit, ``against`` when
    given, and with ``finite`` that no tensor holds NaN or Inf (counted in the same pass as the checksums).

    An unreadable file raises :class:`FormatError`; every other finding is a line in ``Report.problems``. It
    agrees with ``load_into``: what that accepts (a model alias the file drops, a model tie stored as equal
    copies) is a note, not a problem.
    """
    expected = _against(against) if against is not None else None
    problems: list[str] = []
    with open_source(path) as source:
        try:
            manifest = source.manifest(check=False)
        except FormatError as e:
            return Report(str(path), (str(e),), None)
        problems += source.problems()
        stored = source.stored_names()
        candidates = digest_candidates(manifest)
        digests: dict[str, str] = {}
        nonfinite: dict[str, tuple[int, int, int]] = {}
        for entry in manifest.tensors:
            if entry.name not in stored:
                continue
            try:
                tensor = source.read_entry(entry, verify=verify)
            except ParamioError as e:
                problems.append(str(e))
                continue
            if entry.name in candidates:
                digests[entry.name] = digest(tensor_bytes(tensor), "xxh3_64")
            if finite:
                counts = nonfinite_counts(tensor)
                if any(counts):
                    nonfinite[entry.name] = counts
                    problems.append(_nonfinite_line(entry.name, counts))
            del tensor
        found = None
        if len(problems) == len(nonfinite):  # a damaged file gets its problems, not guesses from its bytes
            found = audit_stored(Stored(manifest, str(path), source=source, verify=False), expected, digests)
        derived = not source.has_manifest or manifest.model_class is None
    if expected is not None:
        actual = manifest.signature() if found is None else as_loaded(manifest.signature(), found)
        problems += compare_signatures(expected, actual, kinds=not derived)
    notes: tuple[str, ...] = ()
    if found is not None:
        problems += found.problems
        notes = found.notes
    return Report(str(path), tuple(problems), manifest, notes, found, nonfinite)


def _nonfinite_line(name: str, counts: tuple[int, int, int]) -> str:
    nan, posinf, neginf = counts
    parts = [f"{n:,} {what}" for n, what in ((nan, "NaN"), (posinf, "+Inf"), (neginf, "-Inf")) if n]
    return f"tensor `{name}`: {', '.join(parts)} (not finite)"
