"""The ``paramio`` command: export, convert, inspect, validate, signature, diff, schema.

Command bodies only delegate to the library. Every failure leaves through one exit path
(:class:`_ParamioGroup.invoke`): one line on stderr naming the file and the problem, exit code 2, and a
traceback (never with locals: they would print tensors) only with ``--debug``. Data goes to stdout, status
and progress to stderr.

Exit codes: 0 success, 1 a finding (validation problems, files differ, stale schemas), 2 bad usage or
unreadable input, 3 an internal error (a bug: rerun with ``--debug`` and report it).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.traceback import Traceback
from torch import nn

import paramio

from ._version import __version__
from .atomic import staged
from .dtypes import DTYPES
from .errors import FormatError, ParamioError, TieError, UninitializedParameterError
from .formats.registry import FORMATS, for_path
from .manifest import Manifest, json_schemas
from .locations import open_source
from .ties import view_of
from .writing import parse_dtype

__all__ = ["app", "main", "manifest_table", "tensor_stats", "EXIT_OK", "EXIT_FINDING", "EXIT_ERROR", "EXIT_BUG"]

EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3
_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


class _InputError(Exception):
    """Bad input the library never sees (a factory that does not import, a failed forward pass): exit 2."""


# -- one exit path -----------------------------------------------------------------------------------------


class _ParamioGroup(typer.core.TyperGroup):
    """Turns every exception from a command into one line on stderr and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ParamioError, OSError, _InputError) as e:
            _fail(ctx, e, EXIT_ERROR, _one_line(e))
        except Exception as e:
            if _is_cli_signal(e):  # usage errors and exits: click reports them
                raise
            # A bug: say so, in one line unless --debug.
            _fail(ctx, e, EXIT_BUG, f"internal error: {type(e).__name__}: {_one_line(e)} "
                  "(rerun with --debug for the traceback)")


def _fail(ctx: typer.Context, e: Exception, code: int, message: str) -> None:
    console = _stderr()
    if ctx.params.get("debug"):
        console.print(Traceback.from_exception(type(e), e, e.__traceback__, show_locals=False, suppress=[typer]))
    console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    ctx.exit(code)


def _is_cli_signal(e: Exception) -> bool:
    # typer >= 0.16 vendors click; match click's exception classes by name to support both.
    return isinstance(e, (typer.Exit, typer.Abort)) or any(c.__name__ == "ClickException" for c in type(e).__mro__)


def _one_line(e: BaseException) -> str:
    """The exception's message; ValidationError keeps its list of problems, anything else its first line."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip() or type(e).__name__
    if isinstance(e, ParamioError) and hasattr(e, "problems"):
        return text
    return text.splitlines()[0]


def _stdout() -> Console:
    # Created per call so that redirected streams (tests, pipes) are seen; wide when not a terminal so
    # that tables piped to a file do not wrap names.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(markup=False, highlight=False, width=200 if wide else None)


def _stderr() -> Console:
    return Console(stderr=True, markup=False, highlight=False)


def _status(message: str) -> None:
    _stderr().print(message, soft_wrap=True)


app = typer.Typer(
    cls=_ParamioGroup,
    name="paramio",
    help="Move PyTorch parameters between safetensors, HDF5, ONNX and .pt files without losing ties.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"paramio {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="PARAMIO_DEBUG", help="Show the traceback of an error (never locals).")
    ] = False,
) -> None:
    """paramio: keep identity (tied parameters) when moving PyTorch weights between formats.

    Exit codes: 0 success, 1 a finding (validation problems, files differ, stale schemas),
    2 bad usage or unreadable input, 3 internal error.
    """


# -- option types ------------------------------------------------------------------------------------------


#: ``--format`` choices: the registry's format names.
FormatName = enum.Enum("FormatName", {name: name for name in FORMATS}, type=str)


class ChecksumChoice(str, enum.Enum):
    default = "default"
    sha256 = "sha256"
    none = "none"


@dataclass(frozen=True)
class ExampleInput:
    """``2x4`` (float32 normal), ``2x8:int64`` (integers in [0, 2)), ``2x8:int64:32`` (in [0, 32))."""

    text: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    high: int = 2

    def make(self, generator: torch.Generator) -> torch.Tensor:
        if self.dtype == torch.bool:
            return torch.randint(0, 2, self.shape, generator=generator).bool()
        if self.dtype.is_floating_point or self.dtype.is_complex:
            return torch.randn(self.shape, generator=generator).to(self.dtype)
        return torch.randint(0, self.high, self.shape, generator=generator).to(self.dtype)


_INT_SHORT = {"long": "int64", "int": "int32", "short": "int16", "byte": "uint8"}


def _parse_example_input(text: str) -> ExampleInput:
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
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool or not high_text.isdigit():
            raise typer.BadParameter(f"{text!r}: an upper bound (2x8:int64:32) needs an integer dtype")
        high = max(1, int(high_text))
    return ExampleInput(text, shape, dtype, high)


def _parse_metadata(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--metadata")
        out[key] = value
    return out


def _check_dtype(value: str | None) -> str | None:
    try:
        return parse_dtype(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


ExampleInputs = Annotated[
    list[ExampleInput] | None,
    typer.Option(
        "--example-input",
        parser=_parse_example_input,
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


# -- sources: factories and files --------------------------------------------------------------------------


def _is_factory(spec: str) -> bool:
    """``package.module:callable`` or ``path/to/file.py:callable``, and not an existing file."""
    if Path(spec).exists():
        return False
    target, sep, attr = spec.rpartition(":")
    return bool(sep and target and attr and all(part.isidentifier() for part in attr.split(".")))


def _import_target(spec: str, target: str) -> Any:
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise _InputError(f"{spec}: no such file {target}")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # so the file can import its neighbours
        free = path.stem.isidentifier() and path.stem not in sys.modules
        name = path.stem if free else f"_paramio_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise _InputError(f"{spec}: cannot import {target} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # a user's own module in the current folder (the console script lacks it)
    return importlib.import_module(target)


def _build_model(spec: str) -> nn.Module:
    """Import ``module:callable`` and call it (or take the module instance it names)."""
    target, _, attr = spec.rpartition(":")
    try:
        obj = _import_target(spec, target)
    except _InputError:
        raise
    except Exception as e:
        raise _InputError(f"{spec}: cannot import {target}: {type(e).__name__}: {_one_line(e)}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _InputError(f"{spec}: {target} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise _InputError(f"{spec}: {attr} is neither a model nor a callable returning one")
        try:
            obj = obj()
        except Exception as e:
            raise _InputError(f"{spec}: calling {attr}() failed: {type(e).__name__}: {_one_line(e)}") from e
    if not isinstance(obj, nn.Module):
        raise _InputError(f"{spec}: {attr}() returned a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, values) if t is not None), None)


def _example_tensors(examples: Sequence[ExampleInput]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(e.make(generator) for e in examples)


def _run_forward(spec: str, model: nn.Module, inputs: tuple[torch.Tensor, ...], backward: bool) -> None:
    """One forward pass in eval mode (so batch-norm statistics stay as they are), and a backward one
    of the first output's sum when gradients are asked for."""
    shapes = " ".join("x".join(map(str, t.shape)) or "scalar" for t in inputs)
    model.eval()
    try:
        with torch.set_grad_enabled(backward):
            out = model(*inputs)
            if backward:
                loss = _first_tensor(out)
                if loss is None or not loss.is_floating_point():
                    raise _InputError(f"{spec}: --grads: the forward pass returned no floating tensor to "
                                      "backpropagate")
                loss.float().sum().backward()
    except _InputError:
        raise
    except Exception as e:
        raise _InputError(f"{spec}: forward pass on --example-input {shapes} failed: "
                          f"{type(e).__name__}: {_one_line(e)}") from e


def _model_from(spec: str, examples: Sequence[ExampleInput] | None, *, backward: bool = False
                ) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    model = _build_model(spec)
    inputs = _example_tensors(examples) if examples else None
    if inputs is not None:
        _run_forward(spec, model, inputs, backward)
    return model, inputs


@contextlib.contextmanager
def _about_model(spec: str | None) -> Iterator[None]:
    """Name the factory in errors about the model it built (ties that cannot be stored, lazy parameters)."""
    try:
        yield
    except (TieError, UninitializedParameterError) as e:
        if spec is None or not _is_factory(spec):
            raise
        raise _InputError(f"{spec}: {_one_line(e)}") from e


def _model_or_path(spec: str, examples: Sequence[ExampleInput] | None) -> nn.Module | str:
    """A model for a factory spec; the path itself otherwise (a checkpoint or a signature JSON)."""
    if _is_factory(spec):
        return _model_from(spec, examples)[0]
    if examples:
        raise typer.BadParameter("--example-input needs a factory (package.module:callable), not a file")
    return spec


# -- inspect: table and statistics -------------------------------------------------------------------------


def tensor_stats(tensor: torch.Tensor) -> dict[str, float | None]:
    """mean, population std, min, max and L2 norm, computed in float64 (None where undefined)."""
    stats: dict[str, float | None] = dict.fromkeys(("mean", "std", "min", "max", "norm"))
    if tensor.numel() == 0:
        return stats
    if tensor.is_complex():
        stats["norm"] = float(torch.linalg.vector_norm(tensor.to(torch.complex128)))
        return stats
    data = tensor.detach().to(torch.float64).reshape(-1)
    stats.update(mean=float(data.mean()), std=float(data.std(correction=0)), min=float(data.min()),
                 max=float(data.max()), norm=float(torch.linalg.vector_norm(data)))
    return stats


def _read_stats(path: str) -> dict[str, dict[str, float | None]]:
    """Statistics of every stored tensor and view, reading one tensor at a time (checksums verified)."""
    out = {}
    with open_source(path) as source:
        manifest = source.manifest()
        views = {}
        for v in manifest.views:
            views.setdefault(v.base, []).append(v)
        for entry in manifest.tensors:
            tensor = source.read_entry(entry, verify=True)
            out[entry.name] = tensor_stats(tensor)
            for v in views.get(entry.name, ()):
                out[v.name] = tensor_stats(view_of(tensor, v))
            del tensor
    return out


def _rows(manifest: Manifest) -> Iterator[tuple[str, str, tuple[int, ...], str, str, str | None]]:
    """(name, dtype, shape, kind, tied-to note, checksum) per name: each stored tensor, then its aliases
    and its views."""
    aliases = {g.canonical: g.aliases for g in manifest.ties}
    views: dict[str, list] = {}
    for v in manifest.views:
        views.setdefault(v.base, []).append(v)
    for t in manifest.tensors:
        yield t.name, t.dtype, t.shape, t.kind, _aliases_note(aliases.get(t.name, ())), t.checksum
        for a in aliases.get(t.name, ()):
            yield a, t.dtype, t.shape, t.kind, f"alias of {t.name}", None
        for v in views.get(t.name, ()):
            note = f"view of {t.name} (offset {v.offset}, stride {list(v.stride)})"
            yield v.name, t.dtype, v.shape, v.kind, note, None
            for a in aliases.get(v.name, ()):
                yield a, t.dtype, v.shape, v.kind, f"alias of {v.name}", None


def _aliases_note(aliases: Sequence[str]) -> str:
    return f"aliases: {', '.join(aliases)}" if aliases else ""


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def manifest_table(manifest: Manifest, stats: Mapping[str, Mapping[str, float | None]] | None = None,
                   title: str | None = None, *, checksums: bool = True) -> Table:
    """The ``paramio inspect`` table: one row per name, aliases and views included."""
    table = Table(title=title, title_justify="left", header_style="bold")
    columns = ("name", "dtype", "shape", "numel", "tied to") + (("checksum",) if checksums else ())
    for column in columns:
        table.add_column(column, justify="right" if column == "numel" else "left", overflow="fold")
    if stats is not None:
        for column in ("mean", "std", "min", "max", "norm"):
            table.add_column(column, justify="right")
    for name, dtype, shape, kind, note, checksum in _rows(manifest):
        label = Text(name) + (Text(f" ({kind})", style="dim") if kind != "parameter" else Text())
        cells: list[Any] = [label, dtype, str(list(shape)), f"{math.prod(shape):,}", note]
        if checksums:
            cells.append(checksum or "")
        if stats is not None:
            row = stats.get(name)
            cells += [_fmt(row[k]) if row else "" for k in ("mean", "std", "min", "max", "norm")]
        style = "dim" if note.startswith("alias of") else None
        table.add_row(*cells, style=style)
    return table


def _summary(manifest: Manifest) -> str:
    stored = [t for t in manifest.tensors if t.kind != "gradient"]
    grads = len(manifest.tensors) - len(stored)
    size = sum(t.numel * DTYPES[t.dtype].itemsize for t in manifest.tensors)
    aliases = sum(len(g.aliases) for g in manifest.ties)
    parts = [_count(len(stored), "stored tensor"), f"{_count(len(manifest.ties), 'tie group')} "
             f"({_count(aliases, 'alias', 'aliases')})"]
    if manifest.views:
        parts.append(_count(len(manifest.views), "view"))
    if grads:
        parts.append(_count(grads, "gradient"))
    parts.append(_size(size))
    return ", ".join(parts)


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


# -- commands ----------------------------------------------------------------------------------------------


@app.command()
def export(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A factory returning an nn.Module (package.module:callable or path/to/file.py:callable; the current "
        "folder is importable), or a checkpoint file (.pt/.pth/.bin state dict, or any format paramio reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write; its suffix picks the format.",
                                      show_default=False)],
    format: Annotated[FormatName | None, typer.Option("--format", "-f", help="Format, if not the suffix's.")] = None,
    example_input: ExampleInputs = None,
    grads: Annotated[bool, typer.Option("--grads", help="Also save gradients (with --example-input: of a "
                                        "backward pass of the first output's sum). A file keeps its own.")] = False,
    dtype: Annotated[str | None, typer.Option("--dtype", callback=_check_dtype,
                                              help="Cast floating tensors: bf16, fp16, fp32, fp64, e4m3, e5m2.")
                     ] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", metavar="KEY=VALUE",
                                                       help="User metadata to record; repeatable.")] = None,
    checksum: Annotated[ChecksumChoice, typer.Option("--checksum", help="Per-tensor checksum: default "
                                                     "(xxh3-64), sha256 or none.")] = ChecksumChoice.default,
    durable: Durable = True,
) -> None:
    """Save a model (from a factory) or a checkpoint file to OUT, ties kept."""
    meta = _parse_metadata(metadata or [])
    if _is_factory(source):
        obj, inputs = _model_from(source, example_input, backward=grads)
    else:
        if example_input:
            raise typer.BadParameter("--example-input needs a factory (package.module:callable), not a file")
        obj, inputs = paramio.load(source), None
    with _about_model(source):
        manifest = paramio.save(obj, out, format=format.value if format else None, example_inputs=inputs,
                                grads=grads, dtype=dtype, metadata=meta or None, checksum=checksum.value,
                                durable=durable)
    _status(f"wrote {out}: {_summary(manifest)}")


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(metavar="IN", help="The file to read.", show_default=False)],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="The file to write; its suffix picks the format.",
                                        show_default=False)],
    dtype: Annotated[str | None, typer.Option("--dtype", callback=_check_dtype,
                                              help="Cast floating tensors: bf16, fp16, fp32, fp64, e4m3, e5m2.")
                     ] = None,
    format: Annotated[FormatName | None, typer.Option("--format", "-f", help="DST's format, if not the suffix's.")
                      ] = None,
    durable: Durable = True,
) -> None:
    """Convert SRC to DST one tensor at a time, ties kept (a progress bar on a terminal)."""
    with _progress(src) as progress:
        manifest = paramio.convert(src, dst, format=format.value if format else None, dtype=dtype,
                                   progress=progress, durable=durable)
    _status(f"wrote {dst}: {_summary(manifest)}")


@contextlib.contextmanager
def _progress(src: Path) -> Iterator[Callable[[str, int], None] | None]:
    """A progress callback drawing a rich bar on stderr, or None when stderr is not a terminal."""
    console = _stderr()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    total = sum(t.numel * DTYPES[t.dtype].itemsize for t in paramio.read_manifest(src).tensors)
    with Progress(TextColumn("converting"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=total)

        def advance(name: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=name)

        yield advance


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout: {file, format, manifest[, stats]}.")
                     ] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Add mean/std/min/max/norm per tensor (reads the data; "
                                        "checksums are verified).")] = False,
) -> None:
    """List every name in FILE: dtype, shape, ties, checksum. Reads no tensor data without --stats."""
    manifest = paramio.read_manifest(file)
    numbers = _read_stats(str(file)) if stats else None
    fmt = for_path(file).name
    if json_:
        payload: dict[str, Any] = {"file": str(file), "format": fmt, "manifest": json.loads(manifest.to_json())}
        if numbers is not None:
            payload["stats"] = {n: {k: _json_number(v) for k, v in s.items()} for n, s in numbers.items()}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    producer = manifest.producer
    who = " ".join(p for p in (producer.name, producer.version) if p)
    if producer.torch:
        who += f" (torch {producer.torch})"
    head = f"{file} · {fmt} · written by {who}"
    if manifest.model_class:
        head += f" · {manifest.model_class}"
    console = _stdout()
    console.print(Text(head, style="bold"))
    console.print(_summary(manifest))
    if manifest.metadata:
        console.print("metadata: " + ", ".join(f"{k}={v}" for k, v in manifest.metadata.items()))
    console.print(manifest_table(manifest, numbers))


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)],
    against: Annotated[str | None, typer.Option("--against", "-a", metavar="SPEC|signature.json",
                                                help="What FILE must hold: a factory (package.module:callable), "
                                                "a signature JSON, or another checkpoint.")] = None,
    example_input: ExampleInputs = None,
) -> None:
    """Check FILE whole (manifest, structure, checksums) and, with --against, its names, shapes and ties."""
    expected = _model_or_path(against, example_input) if against is not None else None
    with _about_model(against):
        report = paramio.validate(file, against=expected)
    console = _stdout()
    if report.ok:
        what = _summary(report.manifest) if report.manifest is not None else ""
        console.print(f"{file}: ok: {what}" + (f"; matches {against}" if against else ""), soft_wrap=True)
        return
    count = len(report.problems)
    console.print(f"{file}: {count} problem{'s' if count != 1 else ''}", soft_wrap=True)
    for problem in report.problems:
        console.print(f"  - {problem}", soft_wrap=True)
    raise typer.Exit(EXIT_FINDING)


@app.command()
def signature(
    source: Annotated[str, typer.Argument(metavar="SPEC|FILE", help="A factory (package.module:callable) or a "
                                          "checkpoint file.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON here (default: stdout).")] = None,
    example_input: ExampleInputs = None,
) -> None:
    """Print or save the signature (names, dtypes, shapes, ties) of a model or checkpoint."""
    with _about_model(source):
        text = paramio.signature(_model_or_path(source, example_input)).to_json() + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    _write_text(out, text)
    _status(f"wrote {out}")


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary name, so a failure leaves the previous file as it was."""
    try:
        with staged() as staging:
            staging.temp_for(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from e


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="A checkpoint file.", show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="Another checkpoint file.", show_default=False)],
    tolerance: Annotated[float, typer.Option("--tolerance", "-t", min=0.0,
                                             help="Largest absolute difference still counted as equal.")] = 0.0,
) -> None:
    """Compare two checkpoints: names, dtypes, shapes, values and ties. Exit 0 when equal, 1 when not."""
    result = paramio.diff(a, b, tolerance=tolerance)
    console = _stdout()
    if result.equal:
        within = f" within {tolerance:g}" if tolerance else ""
        console.print(f"{a} and {b} are equal{within} (max abs difference {result.max_abs:.4g})", soft_wrap=True)
        return
    console.print(f"{a} and {b} differ:", soft_wrap=True)
    lines = [f"only in A: {n}" for n in result.only_in_a] + [f"only in B: {n}" for n in result.only_in_b]
    lines += [_change_line(result.details.get(n), n) for n in result.changed]
    lines += [f"ties: {line}" for line in result.tie_differences]
    if result.ties_changed and not result.tie_differences:
        lines.append("ties: the tie groups differ")
    for line in lines:
        console.print(f"  {line}", soft_wrap=True)
    if result.metadata_changed:
        console.print("  (the user metadata differs too; that alone does not make the files differ)")
    console.print(f"  max abs difference {result.max_abs:.4g}")
    raise typer.Exit(EXIT_FINDING)


def _change_line(detail: Any, name: str) -> str:
    if detail is None:
        return f"changed: {name}"
    if detail.reason == "values":
        return f"values: {name} (max abs {detail.max_abs:.4g}, relative L2 {detail.rel_l2:.3g})"
    a, b = (s.removeprefix("torch.") for s in (detail.a, detail.b))
    return f"{detail.reason}: {name} ({a} in A, {b} in B)"


@app.command()
def schema(
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 naming stale or missing files.")
                     ] = False,
    folder: Annotated[Path, typer.Option("--dir", help="Where the schema files live.", file_okay=False)
                      ] = _SCHEMA_DIR,
) -> None:
    """Write the manifest and signature JSON Schemas (generated from the models) to schemas/."""
    stale = []
    for filename, text in json_schemas().items():
        path = folder / filename
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_text(path, text)
            _status(f"wrote {path}")
    if check and stale:
        console = _stdout()
        for path in stale:
            state = "stale" if path.exists() else "missing"
            console.print(f"{path}: {state}; run `paramio schema` to regenerate", soft_wrap=True)
        raise typer.Exit(EXIT_FINDING)
    if not stale:
        _status(f"{folder}: schemas up to date")


def main() -> None:
    """The console script ``paramio`` (and ``python -m paramio``)."""
    app(prog_name="paramio")
