"""Option types shared by the commands: ``--format``, ``--checksum``, ``--example-input``, ``--metadata``,
``--dtype`` and ``--durable``, each parsed into what the library takes."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from ..formats.registry import FORMATS

if TYPE_CHECKING:
    import torch

__all__ = ["FormatName", "ChecksumChoice", "ExampleInput", "parse_example_input", "example_tensors",
           "parse_metadata", "check_dtype", "ExampleInputs", "Durable", "DtypeOption"]

#: ``--format`` choices: the registry's format names, and ``dcp`` (a torch.distributed.checkpoint folder).
FormatName = enum.Enum("FormatName", {**{name: name for name in FORMATS}, "dcp": "dcp"}, type=str)


class ChecksumChoice(str, enum.Enum):
    default = "default"
    sha256 = "sha256"
    none = "none"


@dataclass(frozen=True)
class ExampleInput:
    """``2x4`` (float32 normal), ``2x8:int64`` (integers in [0, 2)), ``2x8:int64:32`` (in [0, 32))."""

    text: str
    shape: tuple[int, ...]
    dtype: str  # a manifest dtype name
    high: int = 2

    def make(self, generator: torch.Generator) -> torch.Tensor:
        import torch

        from ..dtypes import DTYPES

        dtype = DTYPES[self.dtype]
        if dtype == torch.bool:
            return torch.randint(0, 2, self.shape, generator=generator).bool()
        if dtype.is_floating_point or dtype.is_complex:
            return torch.randn(self.shape, generator=generator).to(dtype)
        return torch.randint(0, self.high, self.shape, generator=generator).to(dtype)


_INT_SHORT = {"long": "int64", "int": "int32", "short": "int16", "byte": "uint8"}


def parse_example_input(text: str) -> ExampleInput:
    """``SHAPE[:DTYPE[:HIGH]]`` as in ``--example-input 2x8:int64:32``."""
    from ..dtypes import DTYPES
    from ..writing import parse_dtype

    dims, _, rest = text.partition(":")
    dtype_text, _, high_text = rest.partition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
        if any(d < 0 for d in shape) or not dims:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a shape like 2x4, optionally with a dtype: 2x8:int64"
                                 ) from None
    name = _INT_SHORT.get(dtype_text.lower(), dtype_text.lower()) or "float32"
    if name not in DTYPES:
        try:
            name = parse_dtype(name)
        except ValueError:
            raise typer.BadParameter(f"{text!r}: unknown dtype {dtype_text!r}; e.g. float32, bf16, int64") from None
    dtype = DTYPES[name]
    high = 2
    if high_text:
        if dtype.is_floating_point or dtype.is_complex or name == "bool" or not high_text.isdigit():
            raise typer.BadParameter(f"{text!r}: an upper bound (2x8:int64:32) needs an integer dtype")
        high = max(1, int(high_text))
    return ExampleInput(text, shape, name, high)


def example_tensors(examples: Sequence[ExampleInput]) -> tuple[torch.Tensor, ...]:
    """The example inputs as tensors, from their own seeded generator (the model's weights stay the
    factory's)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return tuple(e.make(generator) for e in examples)


def parse_metadata(items: Sequence[str]) -> dict[str, str]:
    """``--metadata key=value`` items as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--metadata")
        out[key] = value
    return out


def check_dtype(value: str | None) -> str | None:
    """``--dtype``: a floating dtype name from bf16, fp16, …"""
    from ..writing import parse_dtype

    try:
        return parse_dtype(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


ExampleInputs = Annotated[
    list[ExampleInput] | None,
    typer.Option(
        "--example-input",
        parser=parse_example_input,
        metavar="SHAPE[:DTYPE[:HIGH]]",
        help="An input for one forward pass (initializes lazy modules; ONNX exports the graph with it). "
        "2x4 is a seeded float32 normal tensor; 2x8:int64 gives integers in [0, 2), 2x8:int64:32 in [0, 32). "
        "Repeat for several inputs.",
    ),
]
Durable = Annotated[
    bool,
    typer.Option(
        "--durable/--no-durable",
        help="fsync the file before it replaces OUT, so that it survives a power loss as well as a crash "
        "(default). --no-durable is faster where the disk is slow to flush; the write stays atomic.",
    ),
]
DtypeOption = Annotated[
    str | None,
    typer.Option("--dtype", callback=check_dtype, help="Cast floating tensors: bf16, fp16, fp32, fp64, e4m3, e5m2."),
]
