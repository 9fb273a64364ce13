"""The ``paramio`` typer app and its one exit path.

Every failure of a command leaves through :meth:`ParamioGroup.invoke`: one line on stderr naming the file
and the problem, and a traceback (never with locals: they would print tensors) only with ``--debug``.

Exit codes: 0 success, 1 a finding (validation problems, files differ, stale schemas), 2 bad usage or
unreadable input (a missing optional dependency too), 3 an internal error (a bug: rerun with ``--debug``
and report it).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from .._version import __version__
from ..errors import ParamioError
from .render import one_line, stderr

__all__ = ["app", "main", "InputError", "EXIT_OK", "EXIT_FINDING", "EXIT_ERROR", "EXIT_BUG"]

EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3


class InputError(Exception):
    """Bad input the library never sees (a factory that does not import, a failed forward pass): exit 2."""


class ParamioGroup(typer.core.TyperGroup):
    """Turns every exception from a command into one line on stderr and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ParamioError, OSError, InputError) as e:
            _fail(ctx, e, EXIT_ERROR, one_line(e))
        except Exception as e:
            if _is_cli_signal(e):  # usage errors and exits: click reports them
                raise
            # A bug: say so, in one line unless --debug.
            _fail(ctx, e, EXIT_BUG, f"internal error: {type(e).__name__}: {one_line(e)} "
                  "(rerun with --debug for the traceback)")


def _fail(ctx: typer.Context, e: Exception, code: int, message: str) -> None:
    console = stderr()
    if ctx.params.get("debug"):
        from rich.traceback import Traceback

        console.print(Traceback.from_exception(type(e), e, e.__traceback__, show_locals=False, suppress=[typer]))
    console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    ctx.exit(code)


def _is_cli_signal(e: Exception) -> bool:
    # typer >= 0.16 vendors click; match click's exception classes by name to support both.
    return isinstance(e, (typer.Exit, typer.Abort)) or any(c.__name__ == "ClickException" for c in type(e).__mro__)


app = typer.Typer(
    cls=ParamioGroup,
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


def main() -> None:
    """The console script ``paramio`` (and ``python -m paramio``)."""
    app(prog_name="paramio")
