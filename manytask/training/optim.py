"""AdamW with layer-wise learning-rate decay and a linear warm-up/decay schedule. The fused AdamW kernel where
torch has one for the parameters' device (CPU and CUDA): one kernel over all tensors instead of a Python loop
of small ops per tensor (the Hugging Face Trainer's default too; benchmarks/train_profile.py shows the step's
share of the optimizer)."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import get_linear_schedule_with_warmup

from manytask.models.multitask import MultiTaskModel

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm", "norm.weight")


def layerwise_groups(model: MultiTaskModel, lr: float, decay: float, weight_decay: float) -> list[dict]:
    """Parameter groups whose lr is lr * decay^(L + 1 - depth).

    Heads (depth L + 1) get lr, the top encoder layer lr * decay, embeddings (depth 0) the
    lowest, lr * decay^(L + 1). A branch layer gets the depth of the layer it copies.
    """
    top = model.num_layers + 1
    groups: dict[tuple[int, bool], list] = defaultdict(list)
    names: dict[tuple[int, bool], list] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = model.layer_depth(name)
        wd = not any(k in name for k in NO_DECAY)
        groups[(depth, wd)].append(p)
        names[(depth, wd)].append(name)
    return [
        {
            "params": groups[key],
            "lr": lr * decay ** (top - key[0]),
            "weight_decay": weight_decay if key[1] else 0.0,
            "depth": key[0],
            "param_names": names[key],
        }
        for key in sorted(groups)
    ]


def make_optimizer(model: MultiTaskModel, lr: float, decay: float, weight_decay: float, warmup_steps: int, total_steps: int):
    groups = layerwise_groups(model, lr, decay, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters")
    params = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    try:
        optimizer = torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
    return optimizer, scheduler
