"""The whole exception hierarchy of paramio.

Every error a user can meet for bad input is a :class:`ParamioError`; each also subclasses the builtin a
caller would already catch (``ValueError``, ``FileNotFoundError``), so code written against the stock tools
keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ParamioError",
    "FormatError",
    "MissingFileError",
    "ValidationError",
    "TieError",
    "UninitializedParameterError",
    "InternalError",
]


class ParamioError(Exception):
    """Base of every paramio error."""


class FormatError(ParamioError, ValueError):
    """A file is corrupt, truncated, unsupported or unsafe, or its suffix names no format."""


class MissingFileError(FormatError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, path: object) -> None:
        message = f"{path}: no such file"
        super().__init__(message)
        self.filename = str(path)

    def __str__(self) -> str:
        return self.args[0]


class ValidationError(ParamioError, ValueError):
    """Names, shapes, dtypes or ties disagree; ``.problems`` lists every one of them."""

    def __init__(self, problems: Iterable[str], *, subject: str = "validation") -> None:
        self.problems: list[str] = list(problems)
        count = len(self.problems)
        head = f"{subject} failed with {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class TieError(ParamioError, ValueError):
    """Tensors share memory in a way that cannot be stored faithfully."""


class UninitializedParameterError(ParamioError, ValueError):
    """A lazy module's parameter has no shape yet, so it has nothing to save."""


class InternalError(RuntimeError):
    """An invariant of paramio itself failed: a bug to report, never bad input. Deliberately not a
    :class:`ParamioError`, so that code handling bad input does not take it for one (the CLI exits 3)."""
