"""``make demo`` (``python -m paramio.demo``): the whole job on the built-in examples.

Each example model is saved to every format paramio has, inspected, validated, and loaded back into a
fresh copy whose shared parameter was *untied* (separate layers, a head with its own weight). The demo then
shows what came back: the two names are one Parameter again (``is``), the outputs equal the original's, and
the shared weight's gradient is the sum of the gradients of both uses.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from torch import nn

import paramio
from paramio.display import manifest_table
from paramio.examples import TinyLM, tied_mlp, tiny_lm
from paramio.formats.registry import FORMATS, SUFFIXES

__all__ = ["main"]


@dataclass(frozen=True)
class Case:
    """One example: the model, an untied fresh copy to load into, an input, and the two tied names."""

    name: str
    story: str
    build: Callable[[], nn.Module]
    untied: Callable[[], nn.Module]
    untied_story: str
    example: Callable[[], torch.Tensor]
    canonical: str
    alias: str
    canonical_expr: str  # how a user spells the canonical Parameter, e.g. model[2].weight
    alias_expr: str


@dataclass(frozen=True)
class Outcome:
    """What one format's round trip restored."""

    size: int
    problems: tuple[str, ...]
    was_tied: bool
    tied: bool
    same_output: bool
    grad_sum: bool
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and self.tied and not self.was_tied and self.same_output and self.grad_sum \
            and "DIFFERS" not in self.note


def _untied_mlp() -> nn.Sequential:
    # Separate lazy layers at 2 and 4: load_into materializes them from the file, no forward pass needed.
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(8), nn.ReLU(),
                         nn.LazyLinear(2))


def _untied_lm() -> TinyLM:
    model = TinyLM()
    model.head.weight = nn.Parameter(torch.zeros_like(model.embed.weight))
    return model


CASES = (
    Case("tied_mlp", "the seed's MLP: one LazyLinear(8) used at positions 2 and 4", tied_mlp, _untied_mlp,
         "a Sequential with separate lazy layers at 2 and 4",
         lambda: torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), "2.weight", "4.weight",
         "model[2].weight", "model[4].weight"),
    Case("tiny_lm", "a small language model whose output head is tied to its embedding", tiny_lm, _untied_lm,
         "a TinyLM whose head.weight is a separate Parameter",
         lambda: torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1)), "embed.weight",
         "head.weight", "model.embed.weight", "model.head.weight"),
)


#: Shard sizes that put each case's model into three shards (the demo's sharded folder).
SHARD_SIZE = {"tied_mlp": 200, "tiny_lm": 3000}


def _formats() -> list[tuple[str, str]]:
    """(format name, first suffix) for every format paramio has: the demo covers them all."""
    return [(name, next(s for s, f in SUFFIXES.items() if f == name)) for name in FORMATS]


def _untie(model: nn.Module, alias: str) -> nn.Module:
    """A copy of ``model`` whose ``alias`` slot holds its own Parameter with the same values."""
    copy_ = copy.deepcopy(model)
    prefix, _, attr = alias.rpartition(".")
    module = copy_.get_submodule(prefix)
    module._parameters[attr] = nn.Parameter(module._parameters[attr].detach().clone())
    return copy_


def _grad_is_sum_of_uses(model: nn.Module, case: Case, x: torch.Tensor) -> bool:
    """The shared Parameter's gradient equals the gradients of its two uses, computed apart, added up."""
    reference = _untie(model, case.alias)
    for m in (model, reference):
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()
    shared = model.get_parameter(case.canonical).grad
    separate = reference.get_parameter(case.canonical).grad + reference.get_parameter(case.alias).grad
    return shared is not None and torch.allclose(shared, separate, atol=1e-6)


def _onnxruntime_matches(path: Path, x: torch.Tensor, expected: torch.Tensor) -> str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "(onnxruntime not installed)"
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initializers (the LM's causal mask)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    same = torch.allclose(torch.from_numpy(out), expected, atol=1e-5)
    return "onnxruntime agrees" if same else "onnxruntime output DIFFERS"


def _round_trip(case: Case, fmt: str, path: Path, x: torch.Tensor, **options: object) -> Outcome:
    """Save, validate, and load into an untied fresh copy; then check what came back."""
    model = case.build()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    example = (x,) if fmt == "onnx" else None  # ONNX: the runnable graph, not just the weights
    paramio.save(model, path, example_inputs=example, **options)
    report = paramio.validate(path, against=model)

    fresh = case.untied()
    fresh.eval()
    was_tied = fresh.get_parameter(case.canonical) is fresh.get_parameter(case.alias)
    paramio.load_into(fresh, path)
    tied = fresh.get_parameter(case.canonical) is fresh.get_parameter(case.alias)
    with torch.no_grad():
        same_output = torch.equal(fresh(x), expected)
    note = _onnxruntime_matches(path, x, expected) if example is not None else ""
    size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
    return Outcome(size, report.problems, was_tied, tied, same_output,
                   _grad_is_sum_of_uses(fresh, case, x), note)


def _mark(value: bool) -> Text:
    return Text(str(value), style="green" if value else "bold red")


def _explain(case: Case, path: Path, outcome: Outcome, console: Console) -> None:
    console.print(f"loaded {path} into {case.untied_story}:")
    rows = Table.grid(padding=(0, 2))
    rows.add_row(f"  {case.canonical_expr} is {case.alias_expr}",
                 _mark(outcome.tied) + Text(f"  (before loading: {outcome.was_tied})", style="dim"))
    rows.add_row("  outputs equal the original's", _mark(outcome.same_output))
    rows.add_row(f"  {case.canonical_expr}.grad = sum over both uses", _mark(outcome.grad_sum))
    console.print(rows)


def run_case(case: Case, out_dir: Path, formats: list[tuple[str, str]], console: Console) -> bool:
    console.print()
    console.print(Rule(Text(f"{case.name}: {case.story}", style="bold"), align="left"))
    x = case.example()
    table = Table(header_style="bold", title="every format", title_justify="left")
    for column in ("format", "bytes", "validate", "tied", "outputs", "grad sum", ""):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    passed = True
    # a sharded folder (the Hugging Face layout) too: shards small enough that the model spreads over three
    runs = [(fmt, out_dir / f"{case.name}{suffix}", {}) for fmt, suffix in formats]
    runs.append(("sharded", out_dir / f"{case.name}-sharded", {"max_shard_size": SHARD_SIZE[case.name]}))
    for i, (fmt, path, options) in enumerate(runs):
        try:
            outcome = _round_trip(case, fmt, path, x, **options)
        except Exception as e:  # the demo shows a failure and goes on to the next format
            passed = False
            table.add_row(fmt, "", Text(f"failed: {type(e).__name__}: {str(e).splitlines()[0]}", style="bold red"))
            continue
        passed &= outcome.ok
        if i == 0:
            console.print(manifest_table(paramio.read_manifest(path), title=f"$ paramio inspect {path}",
                                         checksums=False))
            _explain(case, path, outcome, console)
        table.add_row(fmt, f"{outcome.size:,}", "ok" if not outcome.problems else Text("; ".join(outcome.problems[:2]),
                      style="bold red"), _mark(outcome.tied), _mark(outcome.same_output), _mark(outcome.grad_sum),
                      outcome.note)
    console.print(table)
    return passed


def _fine_tune(model: nn.Module, steps: int = 5) -> nn.Module:
    """A copy of the tiny LM after a few AdamW steps of next-token training on random tokens (the tie is
    kept: deepcopy copies the one Parameter once)."""
    tuned = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-2)
    tokens = torch.randint(0, 32, (16, 9), generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        logits = tuned(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tuned


def look_at_the_lm(out_dir: Path, console: Console, steps: int = 5) -> bool:
    """The report of the tiny LM and the drift of a briefly fine-tuned copy: where the files are."""
    console.print()
    console.print(Rule(Text(f"tiny_lm: a report, and the drift after {steps} fine-tuning steps", style="bold"),
                       align="left"))
    base, tuned = out_dir / "tiny_lm.safetensors", out_dir / "tiny_lm-tuned.safetensors"
    paramio.save(tiny_lm(), base)
    paramio.save(_fine_tune(tiny_lm(), steps), tuned)
    moved = paramio.diff(base, tuned)
    group = {n: g for g in moved.tie_groups for n in g}
    for name in moved.changed:
        if name in group and name != group[name][0]:
            continue  # an alias: its group's line says it
        d = moved.details[name]
        label = " = ".join(group.get(name, (name,)))
        change = "moved from zero" if d.rel_change == float("inf") else f"relative change {d.rel_change:.3g}"
        console.print(f"  {label}: {change}, cosine {d.cosine:.6f}", soft_wrap=True)
    try:
        page = paramio.report(base, tuned, path=out_dir / "tiny_lm-report.html")
        figure = paramio.report(base, path=out_dir / "tiny_lm-report.png")
        drift = paramio.report(base, tuned, path=out_dir / "tiny_lm-drift.png")
    except ImportError as e:  # the report extra is optional: say how to get it, and pass
        console.print(f"report skipped: {e}")
        return True
    console.print(f"report: {page}  (one self-contained page: open it in a browser, no network needed)", soft_wrap=True)
    console.print(f"figures: {figure} (norms, spread, histograms), {drift} (drift A -> B)", soft_wrap=True)
    console.print(f"same from the shell: {_paramio_command()} report {shlex.quote(str(base))} "
                  f"{shlex.quote(str(tuned))} -o {shlex.quote(str(out_dir / 'report.html'))}", soft_wrap=True)
    return True


def _paramio_command() -> str:
    """How to run ``paramio`` from here as typed: ``make demo`` runs in the venv, whose bin/ is usually not on
    PATH, so the console script next to this Python (relative when under the current folder)."""
    script = Path(sys.executable).parent / "paramio"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m paramio"
    try:
        return shlex.quote(str(script.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paramio.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the files (default: demo-out)")
    args = parser.parse_args(argv)
    console = Console(markup=False, highlight=False)
    args.out.mkdir(parents=True, exist_ok=True)
    formats = _formats()
    console.print(Text(f"paramio {paramio.__version__} demo", style="bold") +
                  Text(f": {', '.join(f for f, _ in formats)} → {args.out}/"))
    torch.manual_seed(0)
    passed = all([run_case(case, args.out, formats, console) for case in CASES])
    passed &= look_at_the_lm(args.out, console)
    console.print(Text("every tie restored: the two names are one Parameter again, outputs are equal, and the "
                       "shared weight's gradient is the sum of both uses." if passed else
                       "some checks FAILED (see the tables above)", style="bold green" if passed else "bold red"))
    command = _paramio_command()
    console.print(f"next: {command} inspect {shlex.quote(str(args.out / f'tiny_lm{formats[0][1]}'))} --stats",
                  soft_wrap=True)
    if command.endswith("paramio") and "/" in command:
        folder = command.rpartition("/")[0]
        console.print(f"(paramio lives in {folder}/: `source {folder}/activate` puts it on your PATH)", soft_wrap=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
