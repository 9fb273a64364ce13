"""One module per command; importing this package registers them all on :data:`paramio.cli.app.app`, in the
order ``paramio --help`` lists them. A new command is a new module here and one line below."""

# The order of registration is the order of `paramio --help`.
from . import export, convert, inspect, validate, signature, diff, stats, report, schema  # noqa: F401, I001

__all__: list[str] = []
