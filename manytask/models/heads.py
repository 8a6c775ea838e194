"""Pooling (how a sentence-level head sees the tokens) and the slice-based-learning head. A task's own head is
its kind's (``kinds/``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from manytask.kinds import get_kind

POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def register_pooler(name: str):
    def wrap(fn):
        POOLERS[name] = fn
        return fn

    return wrap


@register_pooler("cls")
def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


@register_pooler("mean")
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: padding must not change the result (dynamic padding relies on it)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class SBLHead(nn.Module):
    """Slice-based learning (Chen et al., 2019) as a task head: per slice an indicator (is the example in the
    slice?) and an expert representation; an attention over the experts, from indicator confidence times expert
    confidence, mixes them into the representation the task's own output layer reads.

    An expert's confidence is its kind's (``TaskKind.expert_confidence``), the same in training and at
    prediction time. Slot 0 is the base slice (every example). Slicing functions are not needed to predict, so
    the head is served.
    """

    pools = True
    head_name = "sbl"

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, slices: int, kind: str = "classification"):
        super().__init__()
        self.kind = kind
        self._kind = get_kind(kind)
        self.dropout = nn.Dropout(dropout)
        self.indicator = nn.Linear(hidden_size, slices)  # one membership logit per slice (slot 0: base)
        self.experts = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(slices))
        self.expert_head = nn.Linear(hidden_size, num_outputs)  # shared by the experts
        self.out = nn.Linear(hidden_size, num_outputs)

    def parts(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task logits, indicator logits [B, S], expert logits [B, S, ...])."""
        x = self.dropout(pooled)
        indicator = self.indicator(x)
        reps = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, S, H]
        expert_logits = self.expert_head(reps)  # [B, S, C]
        confidence = self._kind.expert_confidence(expert_logits)
        attention = torch.softmax(torch.sigmoid(indicator) * confidence, dim=1)  # [B, S]
        mixed = (attention.unsqueeze(-1) * reps).sum(dim=1)
        logits = self.out(self.dropout(mixed))
        return self._kind.shape_logits(logits), indicator, self._kind.shape_logits(expert_logits)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.parts(pooled)[0]
