"""`paramio.report`: a user looks at a checkpoint (norms, spread, histograms, tie groups) and at how far a
fine-tuned copy drifted from it, as a PNG, an SVG or one self-contained HTML page."""

from __future__ import annotations

import base64
import io
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

import paramio
from paramio.errors import FormatError, ParamioError
from paramio.examples import tiny_lm
from paramio.report import choose_tensors

pytest.importorskip("matplotlib")  # the `report` extra; make test installs it


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = tiny_lm()
    paramio.save(base, tmp_path / "base.safetensors")
    with torch.no_grad():
        base.mlp[0].weight.add_(0.01 * torch.randn_like(base.mlp[0].weight))
    paramio.save(base, tmp_path / "tuned.safetensors")
    return tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel
    assert image.format == "PNG"
    return image


class _Page(HTMLParser):
    """What a reader of the page meets: sections, images, table rows, and anything that would leave it."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.rows: list[dict[str, str]] = []
        self.cells: list[list[str]] = []
        self.outside: list[str] = []
        self.tags: set[str] = set()
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "tr":
            self.rows.append({k: v or "" for k, v in a.items()})
            self.cells.append([])
        if tag == "td":
            self._in_td = True
        for key in ("src", "href"):
            if key in a and not (a[key] or "").startswith("data:"):
                self.outside.append(a[key] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, data: str) -> None:
        if self._in_td and self.cells:
            self.cells[-1].append(data)


def test_the_html_page_is_whole_and_self_contained(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    out = paramio.report(base, tuned, path=tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    assert page.sections == ["summary", "tensors", "norms", "histograms", "drift"]
    assert not page.outside and not {"script", "link", "iframe"} & page.tags  # no network, nothing to fetch
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        _png(base64.b64decode(src.split(",", 1)[1]))
    rows: dict[str, tuple[dict[str, str], list[str]]] = {}
    for attrs, cells in zip(page.rows, page.cells):
        if cells:
            rows.setdefault(cells[0], (attrs, cells))  # the tensor table comes before the drift table
    embed_attrs, embed_cells = rows["embed.weight"]
    assert "tied" in embed_attrs.get("class", "") and embed_cells[1] == "head.weight"  # the tie group, one row
    assert "changed" in rows["mlp.0.weight"][0].get("class", "")
    assert "1.7K parameters (1.7K unique, 512 shared by 2 names)" in text
    # the same input gives the same page
    again = paramio.report(base, tuned, path=tmp_path / "again.html")
    assert again.read_bytes() == out.read_bytes()


def test_png_and_svg_figures_decode_and_are_deterministic(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    png = paramio.report(base, path=tmp_path / "a.png").read_bytes()
    image = _png(png)
    assert image.width >= 1000 and b"Matplotlib" not in png
    assert paramio.report(base, path=tmp_path / "b.png").read_bytes() == png
    drift = _png(paramio.report(base, tuned, path=tmp_path / "drift.png").read_bytes())
    assert drift.size != image.size  # a different figure: no histograms
    svg = paramio.report(base, path=tmp_path / "a.svg").read_bytes()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert b"<dc:date>" not in svg and b"matplotlib.org" not in svg
    assert paramio.report(base, path=tmp_path / "b.svg").read_bytes() == svg


def test_a_model_with_many_layers_gets_a_row_per_tensor(tmp_path: Path) -> None:
    layers = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(60)])  # 120 tensors
    path = tmp_path / "deep.pt"
    paramio.save(layers, path)
    image = _png(paramio.report(path, path=tmp_path / "deep.png").read_bytes())
    assert image.height >= 120 * 18  # each name gets its own line of text (7.5 pt at 110 dpi is ~11 px)


def test_histograms_of_chosen_tensors(pair: tuple[Path, Path]) -> None:
    stats = paramio.stats(pair[0])
    largest = [s.name for s in choose_tensors(stats)]  # the largest weights, in model order
    assert largest[:2] == ["pos", "embed.weight"] and "causal_mask" not in largest and len(largest) == 6
    assert [s.name for s in choose_tensors(stats, "mlp.*.bias")] == ["mlp.0.bias", "mlp.2.bias"]
    assert [s.name for s in choose_tensors(stats, "head.*")] == ["embed.weight"]  # an alias picks its group
    with pytest.raises(FormatError, match="no tensor"):
        choose_tensors(stats, "decoder.*")


@pytest.mark.parametrize("suffix", [".png", ".svg", ".html"])
def test_a_report_needs_matplotlib_and_says_how_to_get_it(pair: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    with pytest.raises(ParamioError, match=r"pip install 'paramio\[report\]'"):
        paramio.report(pair[0], path=tmp_path / f"r{suffix}")
    assert not (tmp_path / f"r{suffix}").exists()
    with pytest.raises(FormatError, match=r"\.html, \.png or \.svg"):
        paramio.report(pair[0], path=tmp_path / "r.pdf")
