"""Option types shared by the commands: ``--format``, ``--checksum``, ``--example-input``, ``--metadata``,
``--dtype`` and ``--durable``, each parsed into what the library takes."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from ..dtype_names import FLOATING, NAMES, cast_name
from ..formats.registry import FORMATS

if TYPE_CHECKING:
    import torch

__all__ = ["FormatName", "ChecksumChoice", "ExampleInput", "parse_example_input", "example_tensors",
           "parse_metadata", "check_dtype", "ExampleInputs", "Durable", "DtypeOption", "DynamicAxis",
           "parse_dynamic_axis", "DynamicBatch", "DynamicAxes", "check_size", "MaxShardSize", "shard_size"]

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
#: The most elements one example input may have (4 GiB of float32): a typo such as 1x80000000000 is a usage
#: error, not an attempt to allocate terabytes.
MAX_EXAMPLE_ELEMENTS = 1 << 30


def _shape(text: str, dims: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
        if any(d < 0 for d in shape) or not dims:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a shape like 2x4, optionally with a dtype: 2x8:int64"
                                 ) from None
    if math.prod(shape) > MAX_EXAMPLE_ELEMENTS:
        raise typer.BadParameter(f"{text!r}: {math.prod(shape):,} elements; an example input holds at most "
                                 f"{MAX_EXAMPLE_ELEMENTS:,} (a batch of 1 or 2 is enough to trace the model)")
    return shape


def parse_example_input(text: str) -> ExampleInput:
    """``SHAPE[:DTYPE[:HIGH]]`` as in ``--example-input 2x8:int64:32``."""
    dims, _, rest = text.partition(":")
    dtype_text, _, high_text = rest.partition(":")
    shape = _shape(text, dims)
    name = _INT_SHORT.get(dtype_text.lower(), dtype_text.lower()) or "float32"
    if name not in NAMES:
        try:
            name = cast_name(name)
        except ValueError:
            raise typer.BadParameter(f"{text!r}: unknown dtype {dtype_text!r}; e.g. float32, bf16, int64") from None
    high = 2
    if high_text:
        if name in FLOATING or name.startswith("complex") or name == "bool" or not high_text.isdigit():
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
    if value is None:
        return None
    try:
        return cast_name(value)
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
@dataclass(frozen=True)
class DynamicAxis:
    """``NAME:DIM`` (``tokens:1``): dimension DIM of the input NAME (a forward argument, or its position)."""

    name: str
    dim: int


def parse_dynamic_axis(text: str) -> DynamicAxis:
    """``--dynamic-axis tokens:1``."""
    name, sep, dim = text.rpartition(":")
    if not sep or not name or not dim.isdigit():
        raise typer.BadParameter(f"{text!r}: expected NAME:DIM, e.g. tokens:1 (dimension 1 of input tokens)")
    return DynamicAxis(name, int(dim))


DynamicBatch = Annotated[
    bool,
    typer.Option("--dynamic-batch", help="ONNX graph: any batch size (dimension 0 of every input), not only "
                 "the example's."),
]
DynamicAxes = Annotated[
    list[DynamicAxis] | None,
    typer.Option("--dynamic-axis", parser=parse_dynamic_axis, metavar="NAME:DIM",
                 help="ONNX graph: dimension DIM of input NAME (a forward argument, or its position) may vary, "
                 "e.g. tokens:1 for any sequence length. Repeatable."),
]
DtypeOption = Annotated[
    str | None,
    typer.Option("--dtype", callback=check_dtype, help="Cast floating tensors: bf16, fp16, fp32, fp64, e4m3, e5m2."),
]


def check_size(value: str | None) -> str | None:
    """``--max-shard-size``: bytes, or 500MB / 5GB (powers of 1000) / 2GiB (powers of 1024)."""
    from ..sharding import parse_size

    if value is None:
        return None
    try:
        parse_size(shard_size(value))  # type: ignore[arg-type]
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return value


MaxShardSize = Annotated[
    str | None,
    typer.Option("--max-shard-size", metavar="SIZE", callback=check_size,
                 help="Write a sharded folder (OUT/ or OUT/model.safetensors.index.json, the Hugging Face layout) "
                 "with shards of at most SIZE: bytes, 500MB, 5GB (powers of 1000) or 2GiB (powers of 1024)."),
]


def shard_size(value: str | None) -> int | str | None:
    """``--max-shard-size`` as the library takes it: digits alone are bytes."""
    return int(value) if value is not None and value.strip().isdigit() else value
