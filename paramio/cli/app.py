"""The ``paramio`` typer app and its one exit path.

Every failure of a command leaves through :meth:`ParamioGroup.invoke`: one line on stderr naming the file
and the problem, and a traceback (never with locals: they would print tensors) only with ``--debug``.

Exit codes: 0 success, 1 a finding (validation problems, files differ, stale schemas), 2 bad usage or
unreadable input (a missing optional dependency too), 3 an internal error (a bug: rerun with ``--debug``
and report it).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from .._version import __version__
from ..errors import InternalError, ParamioError
from .hints import in_cli_terms
from .render import one_line, stderr

__all__ = ["app", "main", "examples", "InputError", "EXIT_OK", "EXIT_FINDING", "EXIT_ERROR", "EXIT_BUG"]

EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3
#: optional packages -> what to install for them.
_EXTRAS = {"matplotlib": "'paramio[report]'"}


class InputError(Exception):
    """Bad input the library never sees (a factory that does not import, a failed forward pass): exit 2."""


def _flags_as_flags(params: list[Any]) -> list[Any]:
    """Boolean flags without typer's ``<bool>`` type column in help (they take no value)."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class ParamioCommand(typer.core.TyperCommand):
    """Every paramio command: flags shown as flags."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))


class ParamioGroup(typer.core.TyperGroup):
    """Turns every exception from a command into one line on stderr and an exit code."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors as one line (click draws a 5-line box), exit 2; exits as ``sys.exit`` codes."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as e:
            if not _is_click_error(e):
                raise
            _usage_error(e)
            sys.exit(getattr(e, "exit_code", EXIT_ERROR))
        except (typer.Abort, KeyboardInterrupt):
            stderr().print("aborted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ParamioError, OSError, InputError) as e:
            _fail(ctx, e, EXIT_ERROR, in_cli_terms(one_line(e), self._flags_of(ctx)))
        except InternalError as e:
            _fail(ctx, e, EXIT_BUG, f"internal error: {one_line(e)}")
        except ModuleNotFoundError as e:
            if not e.name or e.name.partition(".")[0] == "paramio":
                _fail(ctx, e, EXIT_BUG, f"internal error: {type(e).__name__}: {one_line(e)}")
            # an optional dependency that is not installed: bad environment, not a bug
            package = e.name.partition(".")[0]
            _fail(ctx, e, EXIT_ERROR, f"{package} is not installed: pip install {_EXTRAS.get(package, package)}")
        except Exception as e:
            if _is_cli_signal(e):  # usage errors and exits: click reports them
                raise
            # A bug: say so, in one line unless --debug.
            _fail(ctx, e, EXIT_BUG, f"internal error: {type(e).__name__}: {one_line(e)}")


    def _flags_of(self, ctx: typer.Context) -> set[str]:
        """The options of the command that ran (to phrase a fix as one of them)."""
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        return {opt for p in (command.params if command else ()) for opt in (*p.opts, *p.secondary_opts)}


def _usage_error(e: Exception) -> None:
    """``error: paramio export: No such option: --nope (see paramio export --help)``; the help itself for
    ``paramio`` alone (click has printed it already)."""
    if type(e).__name__ == "NoArgsIsHelpError":
        return
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    see = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    stderr().print(Text("error: ", style="bold red") + Text(f"{where}{' '.join(message.split())}{see}"),
                   soft_wrap=True)


def _fail(ctx: typer.Context, e: Exception, code: int, message: str) -> None:
    console = stderr()
    if ctx.params.get("debug"):
        from rich.traceback import Traceback

        console.print(Traceback.from_exception(type(e), e, e.__traceback__, show_locals=False, suppress=[typer]))
    elif code == EXIT_BUG:
        message += " (a bug in paramio: rerun with --debug for the traceback, and report it)"
    console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    ctx.exit(code)


def _is_click_error(e: BaseException) -> bool:
    # typer >= 0.16 vendors click; match click's exception classes by name to support both.
    return any(c.__name__ == "ClickException" for c in type(e).__mro__)


def _is_cli_signal(e: Exception) -> bool:
    return isinstance(e, (typer.Exit, typer.Abort)) or _is_click_error(e)


class _Typer(typer.Typer):
    """``@app.command()`` makes a :class:`ParamioCommand`."""

    def command(self, *args: Any, cls: type[typer.core.TyperCommand] = ParamioCommand, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)


def examples(*lines: str) -> str:
    """A help page's epilog: one or two commands to copy."""
    from rich.markup import escape

    return "Examples:\n\n" + "\n\n".join(f"  $ {escape(line)}" for line in lines)


app = _Typer(
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
