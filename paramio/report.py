"""``paramio.report``: a checkpoint's figures as one PNG/SVG, or a self-contained HTML page.

The page needs no network and no other file: styles are inline, images are PNG data URIs. It holds the
summary (parameter counts, the tie audit, non-finite tensors), the tensor table with tie groups and
statistics, per-tensor norms in model order, histograms, and with a second checkpoint the drift from A to B.
The same input gives the same bytes: no timestamps, and matplotlib's own stamps are left out.
"""

from __future__ import annotations

import base64
import fnmatch
import html
from collections.abc import Sequence
from pathlib import Path

from .atomic import staged
from .audit import Audit, audit_stored
from .diff import Diff, diff
from .errors import FormatError
from .plots import overview_figure, render, single_figure
from .stats import Stats, TensorStats, stats_of
from .stored import open_stored

__all__ = ["report", "choose_tensors"]

_SUFFIXES = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}
_TOP = 6  # histograms of the largest tensors, unless chosen by name
_MAX_HISTOGRAMS = 24


def choose_tensors(stats: Stats, patterns: str | Sequence[str] | None = None) -> list[TensorStats]:
    """The tensors to draw histograms of: those whose names (aliases included) match a glob, in model
    order, or the largest few (floating-point first); at most 24."""
    if patterns is None:
        floating = ("float", "bfloat")  # real-valued weights first: a mask's histogram says little
        ranked = sorted((s for s in stats.stored if s.hist_counts),
                        key=lambda s: (not s.dtype.startswith(floating), -s.numel))[:_TOP]
        order = {s.name: i for i, s in enumerate(stats.stored)}
        return sorted(ranked, key=lambda s: order[s.name])
    globs = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = [s for s in stats.stored if any(fnmatch.fnmatchcase(n, g) for g in globs for n in (s.name, *s.aliases))]
    if not chosen:
        raise FormatError(f"--tensors {' '.join(globs)}: no tensor of {stats.source} matches; names look like "
                          f"`{stats.stored[0].name}`" if stats.stored else f"{stats.source}: no tensors")
    return chosen[:_MAX_HISTOGRAMS]


def report(a: object, b: object | None = None, *, path: str | Path, tensors: str | Sequence[str] | None = None,
           bins: int = 64) -> Path:
    """Write the report of ``a`` (and its drift to ``b``) to ``path``: ``.png``/``.svg`` one figure (A alone:
    norms, std and histograms; with B: the drift), ``.html`` the self-contained page. ``tensors``: globs
    choosing the histograms (default: the largest tensors). Returns ``path``."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FormatError(f"{path}: a report is .html, .png or .svg")
    with open_stored(a) as stored:
        stats = stats_of(stored, bins=bins)
        found = audit_stored(stored)
    result = diff(a, b, values_only=True) if b is not None else None
    chosen = choose_tensors(stats, tensors)
    title_a = _name(a)
    if fmt == "html":
        data = _page(stats, found, chosen, result, title_a, _name(b) if b is not None else None).encode()
    elif result is not None:
        data = render(single_figure("drift", stats, f"drift {title_a} → {_name(b)}", result=result), fmt)
    else:
        data = render(overview_figure(stats, chosen, f"{title_a}: {stats.summary()}"), fmt)
    _write(path, data)
    return path


def _name(obj: object) -> str:
    return str(obj) if isinstance(obj, (str, Path)) else type(obj).__name__


def _write(path: Path, data: bytes) -> None:
    try:
        with staged() as staging:
            staging.temp_for(path).write_bytes(data)
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from e


# -- the page --------------------------------------------------------------------------------------------
_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1280px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f5f5f5; position: sticky; top: 0; }
td.name, th.name { text-align: left; font-family: ui-monospace, monospace; }
tr.tied td.name { color: #b35900; } tr.nonfinite td { background: #fde8e8; } tr.changed td.name { color: #c44e52; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
ul.notes li { margin: 0.2em 0; } .muted { color: #777; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _image(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _page(stats: Stats, found: Audit, chosen: list[TensorStats], result: Diff | None, a: str, b: str | None
          ) -> str:
    title = f"paramio report: {a}" + (f" → {b}" if b else "")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{_e(title)}</title>\n"
             f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>"]
    parts.append(_summary(stats, found, result, a, b))
    parts.append(_tensor_table(stats, result))
    parts.append('<section id="norms">\n<h2>Norms and spread per tensor, in model order</h2>\n'
                 + _image(render(single_figure("norms", stats, f"{a}: L2 norm and std per tensor"), "png"),
                          "L2 norm and standard deviation per tensor") + "\n</section>")
    parts.append('<section id="histograms">\n<h2>Histograms</h2>\n<p class="muted">Finite values only; counts on a '
                 "log scale; the line marks the mean.</p>\n"
                 + _image(render(single_figure("histograms", stats, f"{a}: histograms", chosen=chosen), "png"),
                          "histograms of " + ", ".join(s.name for s in chosen)) + "\n</section>")
    if result is not None:
        parts.append(_drift(stats, result, a, b or ""))
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _summary(stats: Stats, found: Audit, result: Diff | None, a: str, b: str | None) -> str:
    rows = [("checkpoint", a), ("parameters", stats.summary()),
            ("stored tensors", f"{len(stats.stored):,}"),
            ("tensors with NaN/Inf", ", ".join(stats.nonfinite) or "none")]
    if b is not None and result is not None:
        rows.append(("compared with", b))
        rows.append(("changed tensors", f"{len(result.changed):,} of {len(result.details):,} names"))
    body = "\n".join(f"<tr><th class=\"name\">{_e(k)}</th><td class=\"name\">{_e(v)}</td></tr>" for k, v in rows)
    notes = found.notes + found.problems
    audit = ("<ul class=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>") if notes else \
        '<p class="muted">The tie audit found nothing to report.</p>'
    return (f'<section id="summary">\n<h2>Summary</h2>\n<table>\n{body}\n</table>\n<h3>Tie audit</h3>\n{audit}\n'
            "</section>")


_COLUMNS = ("name", "tied to", "dtype", "shape", "numel", "mean", "std", "min", "max", "absmax", "L2 norm",
            "zeros", "NaN", "Inf")


def _tensor_table(stats: Stats, result: Diff | None) -> str:
    head = "".join(f'<th class="name">{c}</th>' if c in ("name", "tied to") else f"<th>{c}</th>" for c in _COLUMNS)
    rows = []
    for s in stats.stored:
        classes = [c for c, on in (("tied", bool(s.aliases)), ("nonfinite", s.nonfinite)) if on]
        if result is not None and s.name in result.details and result.details[s.name].changed:
            classes.append("changed")
        cells = [s.name, ", ".join(s.aliases), s.dtype, str(list(s.shape)), _num(s.numel), _num(s.mean), _num(s.std),
                 _num(s.min), _num(s.max), _num(s.absmax), _num(s.l2_norm),
                 f"{100 * s.zero_fraction:.1f}%" if s.numel else "—", _num(s.nan_count), _num(s.inf_count)]
        tds = "".join(f'<td class="name">{_e(c)}</td>' if i < 2 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        rows.append(f'<tr class="{" ".join(classes)}">{tds}</tr>' if classes else f"<tr>{tds}</tr>")
    return ('<section id="tensors">\n<h2>Tensors</h2>\n<p class="muted">One row per stored tensor in model order; '
            "a tie group is one row naming its aliases. Figures are over the finite values.</p>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n</section>")


def _drift(stats: Stats, result: Diff, a: str, b: str) -> str:
    image = _image(render(single_figure("drift", stats, f"drift {a} → {b}", result=result), "png"),
                   "relative change and cosine similarity per tensor")
    rows = []
    for s in stats.stored:
        d = result.details.get(s.name)
        if d is None:
            continue
        cls = ' class="changed"' if d.changed else ""
        cells = [s.name, ", ".join(s.aliases), _num(d.rel_change), f"{d.cosine:.6f}", _num(d.max_abs),
                 d.reason or "equal"]
        tds = "".join(f'<td class="name">{_e(c)}</td>' if i < 2 else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        rows.append(f"<tr{cls}>{tds}</tr>")
    only = [f"only in A: {n}" for n in result.only_in_a] + [f"only in B: {n}" for n in result.only_in_b]
    extra = ("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in only + list(result.tie_differences)) + "</ul>") if (
        only or result.tie_differences) else ""
    head = ('<th class="name">name</th><th class="name">tied to</th><th>relative change</th><th>cosine</th>'
            "<th>max abs</th><th>compared</th>")
    return (f'<section id="drift">\n<h2>Drift from A to B</h2>\n<p class="muted">A: {_e(a)}; B: {_e(b)}. Relative '
            "change ‖B−A‖/‖A‖ and cosine similarity per tensor, in A's model order (values compared after "
            f"casting).</p>\n{image}\n{extra}\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(rows) + "\n</tbody>\n</table>\n</section>")
