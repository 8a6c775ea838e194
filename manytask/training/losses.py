"""Per-task losses on gold labels: cross-entropy, or L2 between sigmoid output and the [0,1] label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manytask.tasks import TaskSpec


def gold_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if spec.kind == "classification":
        return F.cross_entropy(logits, labels.long())
    return F.mse_loss(torch.sigmoid(logits), labels.float())
