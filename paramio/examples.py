"""Built-in example models, used by ``make demo``, the docs and the tests.

Both carry ties, the thing paramio exists to keep: a layer reused twice, and an embedding tied to the
output head.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["tied_mlp", "lazy_tied_mlp", "TinyLM", "tiny_lm"]


def tied_mlp(*, initialized: bool = True, seed: int = 0) -> nn.Sequential:
    """The seed's MLP: one ``LazyLinear(8)`` reused at positions 2 and 4.

    Its parameters are ``0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias, 6.weight, 6.bias``, with
    tie groups ``2.weight ← 4.weight`` and ``2.bias ← 4.bias``. ``initialized=False`` returns it lazy
    (shapes unknown until a forward pass on a ``(batch, 4)`` input, or until ``load_into``).
    """
    torch.manual_seed(seed)
    shared = nn.LazyLinear(8)
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.LazyLinear(2))
    if initialized:
        model(torch.zeros(1, 4))
    return model


def lazy_tied_mlp(*, seed: int = 0) -> nn.Sequential:
    """:func:`tied_mlp` before its first forward pass, as a zero-argument factory for the command line
    (``paramio export paramio.examples:lazy_tied_mlp --example-input 2x4 -o mlp.safetensors``)."""
    return tied_mlp(initialized=False, seed=seed)


class TinyLM(nn.Module):
    """A small language model whose output head is tied to its token embedding (as in GPT-2)."""

    def __init__(self, vocab: int = 32, dim: int = 16, context: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # the tie
        self.register_buffer("causal_mask", torch.tril(torch.ones(context, context, dtype=torch.bool)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        x = x + self.mlp(self.norm(x))
        return self.head(x)


def tiny_lm(*, seed: int = 0) -> TinyLM:
    """A :class:`TinyLM` with seeded weights: ``head.weight`` is an alias of ``embed.weight``."""
    torch.manual_seed(seed)
    model = TinyLM()
    with torch.no_grad():
        model.pos.normal_(std=0.02)
    return model
