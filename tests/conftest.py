"""Shared fixtures: the built-in example models and their untied twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramio.examples import TinyLM, tied_mlp, tiny_lm


def untied_mlp() -> nn.Sequential:
    """The seed's MLP architecture with separate layers at 2 and 4 (what a naive loader rebuilds)."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2))


def untied_lm() -> TinyLM:
    """A TinyLM whose head has its own weight: the tie is gone."""
    model = TinyLM()
    model.head.weight = nn.Parameter(torch.zeros_like(model.embed.weight))
    return model


@pytest.fixture
def mlp() -> nn.Sequential:
    return tied_mlp()


@pytest.fixture
def lm() -> TinyLM:
    return tiny_lm()
