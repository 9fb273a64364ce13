"""Property tests: random checkpoints round-trip through every format and every pair of formats.

Hypothesis draws named dicts of every dtype a format stores (random bits, NaN payloads included), shapes
from 0-d to rank 4 with empty dims, tie groups (the same tensor under several names), partial aliases
(slices, selects, transposes and strided views of a stored tensor), gradients, and unicode metadata. Each is
saved, loaded, and converted to every format; what comes back must be identical: values bit for bit,
dtypes, shapes, metadata, gradients, and identity (``is`` for ties, shared memory for views, and nothing
else shared). ``HYPOTHESIS_PROFILE=long`` runs many more examples.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import paramio
from paramio.checkpoint import from_mapping
from paramio.cli import app
from paramio.dtypes import DTYPES
from paramio.errors import FormatError

from .reliability import PROFILE, SUFFIX, bits_equal, formats_present

FORMATS = formats_present()


@functools.cache
def supported(fmt: str) -> frozenset[str]:
    """The dtypes ``fmt`` stores: every one a save does not refuse with a FormatError (a dtype that saves but
    does not load back fails the properties below)."""
    import tempfile

    out = set()
    with tempfile.TemporaryDirectory() as folder:
        for name, dtype in DTYPES.items():
            try:
                paramio.save({"x": torch.zeros(2, dtype=dtype)}, Path(folder) / f"probe{SUFFIX[fmt]}")
            except FormatError:
                continue
            out.add(name)
    return frozenset(out)


# -- strategies -------------------------------------------------------------------------------------------------

names = st.text(st.characters(categories=("L", "N"), exclude_characters="/") | st.sampled_from("._-"),
                min_size=1, max_size=12).filter(lambda s: s.strip("."))
shapes = st.lists(st.integers(0, 4), max_size=4).map(tuple)
metadata = st.dictionaries(st.text(max_size=16), st.text(max_size=32), max_size=4)


@st.composite
def tensors(draw: st.DrawFn, dtypes: list[str], shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Random bits of a random dtype (bool: 0 or 1)."""
    dtype = DTYPES[draw(st.sampled_from(dtypes))]
    shape = draw(shapes) if shape is None else shape
    numel = 1
    for d in shape:
        numel *= d
    if dtype == torch.bool:
        bits = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        return torch.tensor(bits, dtype=torch.bool).reshape(shape)
    raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


@st.composite
def views(draw: st.DrawFn, base: torch.Tensor) -> torch.Tensor:
    """A partial alias of ``base``: a non-empty view that is not ``base`` itself."""
    flat = base.reshape(-1)
    kinds = ["slice", "strided", "reshape"] + (["select"] if base.dim() and base.shape[0] else [])
    kinds += ["transpose"] if base.dim() >= 2 else []
    kind = draw(st.sampled_from(kinds))
    if kind == "select":
        return base[draw(st.integers(0, base.shape[0] - 1))]
    if kind == "transpose":
        return base.transpose(0, base.dim() - 1)
    if kind == "reshape":
        return flat.reshape(1, -1) if base.dim() != 2 or base.shape[0] != 1 else flat
    start = draw(st.integers(0, flat.numel() - 1))
    stop = draw(st.integers(start + 1, flat.numel()))
    return flat[start:stop:draw(st.integers(1, 3)) if kind == "strided" else 1]


@st.composite
def checkpoints(draw: st.DrawFn, dtypes: list[str]) -> tuple[dict, dict, dict]:
    """(named tensors, gradients, metadata): fresh tensors, ties (same object or an equal view), views."""
    count = draw(st.integers(1, 8))
    keys = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    named: dict[str, torch.Tensor] = {}
    fresh: list[str] = []
    for key in keys:
        bases = [n for n in fresh if named[n].numel() > 0]
        kind = draw(st.sampled_from(["fresh", "fresh", "tie", "same-view", "view"])) if named else "fresh"
        if kind == "tie":
            named[key] = named[draw(st.sampled_from(sorted(named)))]
        elif kind == "same-view":  # another object over the same memory, as state_dict() gives
            named[key] = named[draw(st.sampled_from(sorted(named)))].detach()
        elif kind == "view" and bases:
            named[key] = draw(views(named[draw(st.sampled_from(bases))]))
        else:
            named[key] = draw(tensors(dtypes))
            fresh.append(key)
    floating = [n for n in fresh if named[n].is_floating_point()]
    with_grad = draw(st.lists(st.sampled_from(floating), unique=True)) if floating else []
    grads = {n: draw(tensors([k for k in dtypes if DTYPES[k].is_floating_point], tuple(named[n].shape)))
             for n in with_grad}
    return named, grads, draw(metadata)


# -- the oracle: identity in the original dict ------------------------------------------------------------------


def _same_view(t: torch.Tensor) -> object:
    """Two names are one tensor when they are the same object, or (owning memory) the same view."""
    if t.numel() == 0:
        return ("object", id(t))
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _span(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage, first byte, past the last byte) that a non-empty tensor reaches."""
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return t.untyped_storage().data_ptr(), t.storage_offset() * t.element_size(), (last + 1) * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    (sa, a0, a1), (sb, b0, b1) = _span(a), _span(b)
    return sa == sb and a0 < b1 and b0 < a1


def assert_same_checkpoint(loaded: paramio.Checkpoint, named: dict, grads: dict, meta: dict, where: str) -> None:
    """Every name, value, dtype, shape, gradient and metadata item, and the identity structure."""
    assert set(loaded) == set(named), where
    for name, tensor in named.items():
        assert bits_equal(loaded[name], tensor), f"{where}: `{name}` differs"
    assert set(loaded.grads) == set(grads), where
    for name, grad in grads.items():
        assert bits_equal(loaded.grads[name], grad), f"{where}: gradient of `{name}` differs"
    assert loaded.metadata == meta, where
    for a, b in itertools.combinations(named, 2):
        tied = _same_view(named[a]) == _same_view(named[b])
        assert (loaded[a] is loaded[b]) == tied, f"{where}: `{a}` is `{b}` should be {tied}"
        if not tied:
            shared = _overlap(named[a], named[b])
            assert _overlap(loaded[a], loaded[b]) == shared, f"{where}: `{a}` and `{b}` share memory: {shared}"


def _dtypes_of(named: dict, grads: dict) -> set[str]:
    names = {v: k for k, v in DTYPES.items()}
    return {names[t.dtype] for t in [*named.values(), *grads.values()]}


# -- the properties ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_checkpoints_round_trip_through_every_format_and_pair(tmp_path_factory: pytest.TempPathFactory,
                                                                       fmt: str) -> None:
    examples = []

    @settings(PROFILE)
    @given(data=st.data())
    def round_trip(data: st.DataObject) -> None:
        examples.append(1)
        named, grads, meta = data.draw(checkpoints(sorted(supported(fmt))))
        folder = tmp_path_factory.mktemp(fmt)
        source = folder / f"source{SUFFIX[fmt]}"
        paramio.save(from_mapping(named, metadata=meta, grads=grads), source)
        assert_same_checkpoint(paramio.load(source), named, grads, meta, fmt)
        for target_fmt in FORMATS:
            target = folder / f"target-{target_fmt}{SUFFIX[target_fmt]}"
            if _dtypes_of(named, grads) <= supported(target_fmt):
                paramio.convert(source, target)
                assert_same_checkpoint(paramio.load(target), named, grads, meta, f"{fmt} -> {target_fmt}")
            else:
                with pytest.raises(FormatError, match="dtype"):
                    paramio.convert(source, target)
                assert not target.exists()
        assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]

    round_trip()
    assert len(examples) >= PROFILE.max_examples  # each one a checkpoint through 1 + len(FORMATS) round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_dtype_a_format_lacks_is_refused_cleanly(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"m{SUFFIX[fmt]}"
    for name in sorted(set(DTYPES) - supported(fmt)):
        with pytest.raises(FormatError, match=name):
            paramio.save({"ok": torch.ones(2), "x": torch.zeros(3, dtype=DTYPES[name])}, path)
        assert list(tmp_path.iterdir()) == []
    assert {"float32", "float16", "bfloat16", "int64", "bool"} <= supported(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_flipped_bit_in_any_tensor_is_caught_and_named(tmp_path_factory: pytest.TempPathFactory,
                                                         fmt: str) -> None:
    """Integrity: one flipped bit anywhere in any stored tensor's data fails ``load`` and ``paramio validate``
    (exit 1) naming that tensor; ``verify=False`` reads it anyway."""
    runner = CliRunner()
    examples = []

    @settings(PROFILE)
    @given(data=st.data())
    def flip(data: st.DataObject) -> None:
        examples.append(1)
        dtypes = [d for d in sorted(supported(fmt)) if d != "bool"]
        count = data.draw(st.integers(1, 4))
        sizes = st.tuples(st.integers(2, 5), st.integers(4, 6))  # at least 8 bytes each
        named = {f"t{i}.w": data.draw(tensors(dtypes, data.draw(sizes))) for i in range(count)}
        for i, t in enumerate(named.values()):  # a distinct 8-byte marker first: each tensor's bytes lie once
            t.view(-1).view(torch.uint8)[:8] = torch.tensor([0xA5, 0x5A, i, 0xC3, 0x3C, 0x96, 0x69, 0xF0],
                                                            dtype=torch.uint8)
        path = tmp_path_factory.mktemp(fmt) / f"m{SUFFIX[fmt]}"
        paramio.save(named, path)
        victim = data.draw(st.sampled_from(sorted(named)))
        raw = named[victim].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        blob = bytearray(path.read_bytes())
        at = blob.find(raw)
        assert at >= 0 and blob.find(raw, at + 1) < 0, "each tensor's bytes lie once in the file, uncompressed"
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        blob[at + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(blob))
        with pytest.raises(FormatError, match=f"`{victim}`.*checksum"):
            paramio.load(path)
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 1 and victim in result.output
        ck = paramio.load(path, verify=False)
        assert not bits_equal(ck[victim], named[victim])
        assert all(bits_equal(ck[n], t) for n, t in named.items() if n != victim)

    flip()
    assert len(examples) >= PROFILE.max_examples
