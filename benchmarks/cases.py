"""Deterministic state dicts for the benchmark cases.

- ``gpt2``: GPT-2-small-like (124M float32 parameters, 498 MB), ``lm_head.weight`` tied to the embedding.
- ``small``: 20,000 small float32 tensors (99 MB): per-tensor overhead dominates.
- ``big``: the GPT-2 layout widened to ~2.15 GB, with the same tie and the same names as ``gpt2`` (so
  manifest reads of ``gpt2`` and ``big`` differ in data size only).
- ``xl`` (opt-in, ``--cases xl``): the same layout at ~8.6 GB (4x big), for the sharded-folder phase.

``scale`` shrinks every case for smoke runs (``quick``, ``tiny``); the same case and scale always give the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CASES", "DEFAULT_CASES", "SCALES", "Spec", "spec", "state_dict", "ALIAS", "CANONICAL"]

CASES = ("small", "gpt2", "big", "xl")
#: What ``make bench`` runs; ``xl`` is opt-in (8.6 GB, and ~35 GB of temporary files).
DEFAULT_CASES = ("small", "gpt2", "big")
SCALES = ("full", "quick", "tiny")
ALIAS = "lm_head.weight"
CANONICAL = "transformer.wte.weight"

# (width, vocabulary, positions) for the GPT-2-like cases; (tensor count) for ``small``.
_GPT = {
    ("gpt2", "full"): (768, 50257, 1024),
    ("gpt2", "quick"): (256, 8192, 256),
    ("gpt2", "tiny"): (32, 256, 32),
    ("big", "full"): (1760, 50257, 1024),
    ("big", "quick"): (512, 16384, 512),
    ("big", "tiny"): (64, 512, 64),
    ("xl", "full"): (3680, 50257, 1024),
    ("xl", "quick"): (1024, 16384, 512),
    ("xl", "tiny"): (128, 512, 64),
}
_SMALL = {"full": 20_000, "quick": 2_000, "tiny": 100}
_SMALL_SHAPES = ((31, 40), (1240,), (8, 155), (62, 20))  # 1240 float32 each: 4,960 bytes
_LAYERS = 12
_SEED = 20240611


@dataclass(frozen=True)
class Spec:
    case: str
    scale: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # stored tensors in state_dict order
    aliases: tuple[tuple[str, str], ...]  # (alias, canonical), placed right after ``shapes`` in the dict

    @property
    def nbytes(self) -> int:
        """Bytes of stored tensor data (float32)."""
        return sum(4 * _numel(shape) for _, shape in self.shapes)

    @property
    def largest(self) -> int:
        return max(4 * _numel(shape) for _, shape in self.shapes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _gpt_shapes(width: int, vocab: int, positions: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("transformer.wte.weight", (vocab, width)), ("transformer.wpe.weight", (positions, width))]
    for i in range(_LAYERS):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (width,)), (p + "ln_1.bias", (width,)),
            (p + "attn.c_attn.weight", (width, 3 * width)), (p + "attn.c_attn.bias", (3 * width,)),
            (p + "attn.c_proj.weight", (width, width)), (p + "attn.c_proj.bias", (width,)),
            (p + "ln_2.weight", (width,)), (p + "ln_2.bias", (width,)),
            (p + "mlp.c_fc.weight", (width, 4 * width)), (p + "mlp.c_fc.bias", (4 * width,)),
            (p + "mlp.c_proj.weight", (4 * width, width)), (p + "mlp.c_proj.bias", (width,)),
        ]
    return out + [("transformer.ln_f.weight", (width,)), ("transformer.ln_f.bias", (width,))]


def spec(case: str, scale: str = "full") -> Spec:
    if case not in CASES or scale not in SCALES:
        raise ValueError(f"unknown case/scale {case!r}/{scale!r}; cases {CASES}, scales {SCALES}")
    if case == "small":
        n = _SMALL[scale]
        shapes = tuple((f"blocks.{i // 100}.p{i % 100}", _SMALL_SHAPES[i % len(_SMALL_SHAPES)]) for i in range(n))
        return Spec(case, scale, shapes, ())
    return Spec(case, scale, tuple(_gpt_shapes(*_GPT[case, scale])), ((ALIAS, CANONICAL),))


def state_dict(s: Spec) -> dict[str, torch.Tensor]:
    """The case's tensors (seeded normal values), aliases being the very canonical tensor."""
    gen = torch.Generator().manual_seed(_SEED)
    out: dict[str, torch.Tensor] = {}
    for name, shape in s.shapes:
        t = torch.empty(shape)
        t.normal_(0.0, 0.02, generator=gen)
        out[name] = t
    for alias, canonical in s.aliases:
        out[alias] = out[canonical]
    return out
