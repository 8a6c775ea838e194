"""Task heads and pooling, registered by name so a new kind is one decorated class."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
HEADS: dict[str, type] = {}


def register_pooler(name: str):
    def wrap(fn):
        POOLERS[name] = fn
        return fn

    return wrap


def register_head(kind: str):
    def wrap(cls):
        HEADS[kind] = cls
        return cls

    return wrap


@register_pooler("cls")
def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


@register_pooler("mean")
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: padding must not change the result (dynamic padding relies on it)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


@register_head("classification")
class ClassificationHead(nn.Module):
    """Dropout + linear over the pooled vector; logits for a softmax."""

    pools = True  # the head reads the pooled vector (a token head reads every token)

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


@register_head("regression")
class RegressionHead(ClassificationHead):
    """One logit; the prediction is its sigmoid, on labels scaled to [0, 1] (as BAM does)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__(hidden_size, 1, dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return super().forward(pooled).squeeze(-1)


@register_head("tagging")
class TokenHead(ClassificationHead):
    """Dropout + linear at every token: tag logits [batch, tokens, tags]. It reads the token states,
    not a pooled vector (``pools = False``)."""

    pools = False


def make_head(kind: str, hidden_size: int, num_outputs: int, dropout: float) -> nn.Module:
    if kind not in HEADS:
        raise ValueError(f"no head for task kind {kind!r} (known: {', '.join(HEADS)})")
    return HEADS[kind](hidden_size, num_outputs, dropout)
