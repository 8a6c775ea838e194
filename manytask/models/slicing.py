"""Slice-based learning (Chen et al., 2019) as a task head: per slice an indicator (is the example in the
slice?) and an expert representation; an attention over the experts, from indicator confidence times
expert confidence, mixes them into the representation the task's own head reads.

The reference implementation is binary. Here an expert's confidence is the probability of the class it
predicts (for two classes this grows with |logit|, as the reference's does), the same in training and at
prediction time; for regression every expert's confidence is 1, so the indicators alone attend. Slot 0 is
the base slice (every example). Slicing functions are not needed to predict, so the head is served.
"""

from __future__ import annotations

import torch
from torch import nn


class SBLHead(nn.Module):
    pools = True

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, slices: int, kind: str = "classification"):
        super().__init__()
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.indicator = nn.Linear(hidden_size, slices)  # one membership logit per slice (slot 0: base)
        self.experts = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(slices))
        self.expert_head = nn.Linear(hidden_size, num_outputs)  # shared by the experts
        self.out = nn.Linear(hidden_size, num_outputs)

    def parts(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task logits, indicator logits [B, S], expert logits [B, S, C])."""
        x = self.dropout(pooled)
        indicator = self.indicator(x)
        reps = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, S, H]
        expert_logits = self.expert_head(reps)  # [B, S, C]
        if self.kind == "classification":
            confidence = torch.softmax(expert_logits, dim=-1).max(dim=-1).values
        else:
            confidence = torch.ones_like(indicator)
        attention = torch.softmax(torch.sigmoid(indicator) * confidence, dim=1)  # [B, S]
        mixed = (attention.unsqueeze(-1) * reps).sum(dim=1)
        logits = self.out(self.dropout(mixed))
        if self.kind == "regression":
            logits, expert_logits = logits.squeeze(-1), expert_logits.squeeze(-1)
        return logits, indicator, expert_logits

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.parts(pooled)[0]
