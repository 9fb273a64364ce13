"""Signatures and validation: does a checkpoint hold what a model (or a saved signature) expects, and is
the file whole?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydantic
from torch import nn

from .checkpoint import collect
from .errors import FormatError, ParamioError
from .manifest import Manifest, Signature
from .reading import file_problems, manifest_of, open_file, read_verified

__all__ = ["Report", "signature", "compare_signatures", "validate", "load_signature"]


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`validate`: ``ok`` when ``problems`` is empty."""

    path: str
    problems: tuple[str, ...] = field(default=())
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def load_signature(path: str | Path) -> Signature:
    """A signature saved as JSON (``paramio signature -o``)."""
    path = Path(path)
    try:
        return Signature.from_json(path.read_bytes())
    except FileNotFoundError as e:
        from .errors import MissingFileError

        raise MissingFileError(path) from e
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    except pydantic.ValidationError as e:
        raise FormatError(f"{path}: not a paramio signature: {e.errors()[0]['msg']}") from e


def signature(model_or_path: nn.Module | str | Path | Signature) -> Signature:
    """The identity of a model or checkpoint file: names, dtypes, shapes, kinds, views and ties.

    A ``.json`` path is read as a saved signature.
    """
    if isinstance(model_or_path, Signature):
        return model_or_path
    if isinstance(model_or_path, nn.Module):
        return collect(model_or_path).manifest.signature()
    if Path(model_or_path).suffix.lower() == ".json":
        return load_signature(model_or_path)
    with open_file(model_or_path) as reader:
        return manifest_of(reader).signature()


def _partition(sig: Signature) -> dict[str, frozenset[str]]:
    """name -> the set of names tied to it (itself included)."""
    out = {n: frozenset([n]) for n in sig.shapes()}
    for g in sig.ties:
        members = frozenset(g.names)
        for n in members:
            out[n] = members
    return out


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
    want_ties, have_ties = _partition(expected), _partition(actual)
    reported: set[frozenset[str]] = set()
    for name in want:
        if name not in have:
            continue
        a = frozenset(want_ties[name] & have.keys())
        b = frozenset(have_ties[name] & want.keys())
        if a != b and (a | b) not in reported:
            reported.add(a | b)
            problems.append(
                f"ties of `{name}`: expected {{{', '.join(sorted(a))}}}, found {{{', '.join(sorted(b))}}}"
            )
    return problems


def _against(against: object) -> Signature:
    if isinstance(against, (nn.Module, Signature)):
        return signature(against)
    if isinstance(against, (str, Path)):
        return signature(against)
    raise TypeError(f"against= takes a model, a Signature or a signature JSON path, not {type(against).__name__}")


def validate(path: str | Path, against: nn.Module | Signature | str | Path | None = None, *,
             verify: bool = True) -> Report:
    """Check a file whole: manifest schema, file vs manifest, checksums, and ``against`` when given.

    An unreadable file raises :class:`FormatError`; every other finding is a line in ``Report.problems``.
    """
    expected = _against(against) if against is not None else None
    problems: list[str] = []
    with open_file(path) as reader:
        contents = reader.contents()
        try:
            manifest = manifest_of(reader, check=False)
        except FormatError as e:
            return Report(str(path), (str(e),), None)
        problems += file_problems(contents, manifest)
        stored = {s.name for s in contents.stored}
        for entry in manifest.tensors:
            if entry.name not in stored:
                continue
            try:
                read_verified(reader, entry, verify)
            except ParamioError as e:
                problems.append(str(e))
    if expected is not None:
        actual = manifest.signature()
        derived = contents.manifest_json is None or manifest.model_class is None
        problems += compare_signatures(expected, actual, kinds=not derived)
    return Report(str(path), tuple(problems), manifest)
