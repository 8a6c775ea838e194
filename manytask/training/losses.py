"""Per-task losses: on gold labels, and on BAM's mix of gold label and teacher prediction.

Regression outputs are a sigmoid over labels scaled to [0, 1], so both losses are L2 there. Every loss is
a sum over this process's examples divided by ``denominator`` (the count in one process; the global count
over the number of processes under data parallelism), so it is the mean the batch would give in one
process, and stays so when a batch is split across processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manytask.data.features import IGNORE
from manytask.tasks import TaskSpec
from manytask.training.distributed import denominator


def _mean(total: torch.Tensor, count) -> torch.Tensor:
    """``total`` over the (global) count; zero, not NaN, when nothing carries the loss."""
    den = denominator(count, total.device)
    return total * 0.0 if den.item() == 0 else total / den


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled tokens of [batch, tokens, labels] logits (IGNORE elsewhere)."""
    logits, labels = logits.float(), labels.long().reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=IGNORE, reduction="sum")
    return _mean(total, (labels != IGNORE).sum().item())


def gold_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (classification; tagging over the first piece of each word), or L2 on [0, 1]."""
    if spec.kind == "tagging":
        return token_loss(logits, labels)
    return _mean(per_example_loss(spec, logits, labels).sum(), len(labels))


def mixed_target(spec: TaskSpec, labels: torch.Tensor, teacher_logits: torch.Tensor, lam: float,
                 temperature: float = 1.0) -> torch.Tensor:
    """lam * gold + (1 - lam) * teacher: a distribution over classes, or a score in [0, 1]."""
    teacher_logits = teacher_logits.float()
    if spec.kind == "classification":
        gold = F.one_hot(labels.long(), num_classes=teacher_logits.shape[-1]).float()
        return lam * gold + (1.0 - lam) * torch.softmax(teacher_logits / temperature, dim=-1)
    teacher = torch.sigmoid(teacher_logits.reshape(labels.shape))
    return lam * labels.float() + (1.0 - lam) * teacher


def distill_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                 lam: float, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy against the mixed distribution (classification), or L2 against the mixed score."""
    target = mixed_target(spec, labels, teacher_logits, lam, temperature)
    logits = logits.float()
    if spec.kind == "classification":
        return _mean(-(target * F.log_softmax(logits, dim=-1)).sum(), len(labels))
    return _mean(((torch.sigmoid(logits) - target) ** 2).sum(), len(labels))


def hinton_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                lam: float, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al. (2015): lam * gold loss + (1 - lam) * T^2 * KL(teacher_T || student_T).

    Regression has no temperature: the distillation term is L2 to the teacher's score.
    """
    gold = gold_loss(spec, logits, labels)
    logits, teacher_logits = logits.float(), teacher_logits.float()
    if spec.kind == "classification":
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), F.log_softmax(teacher_logits / temperature, dim=-1),
                      reduction="sum", log_target=True)
        soft = _mean(kl, len(labels)) * temperature ** 2
    else:
        soft = _mean(((torch.sigmoid(logits) - torch.sigmoid(teacher_logits.reshape(logits.shape))) ** 2).sum(), len(labels))
    return lam * gold + (1.0 - lam) * soft


def teacher_annealing(progress: float, schedule: str = "linear", lam: float = 0.0) -> float:
    """Weight of the gold label at ``progress`` in [0, 1]: rises linearly 0 -> 1, or stays ``lam``."""
    if schedule == "linear":
        return min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return lam
    raise ValueError(f"unknown teacher-annealing schedule {schedule!r} (linear, constant)")


def per_example_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if spec.kind == "classification":
        return F.cross_entropy(logits, labels.long(), reduction="none")
    return (torch.sigmoid(logits) - labels.float()) ** 2


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the examples that carry the loss (a slice's members, all processes together); zero when
    there are none."""
    return _mean((values * mask).sum(), mask.sum().item())


def slice_losses(spec: TaskSpec, mode: str, logits: dict, batch: dict) -> torch.Tensor:
    """``heads`` (MeTaL): each slice head's loss on its members. ``sbl`` (Chen et al. 2019): each slice
    indicator's membership loss on every example, plus each expert's loss on the slice's members (slot 0,
    the base slice, holds every example)."""
    name = spec.name
    slices = [k[len("slice/"):] for k in batch if k.startswith("slice/")]
    labels = batch["labels"]
    total = torch.zeros((), device=labels.device)
    if mode == "heads":
        for s in slices:
            total = total + masked_mean(per_example_loss(spec, logits[f"{name}#{s}"], labels), batch[f"slice/{s}"].float())
        return total
    indicator, experts = logits[f"{name}/sbl-indicator"].float(), logits[f"{name}/sbl-experts"]
    members = torch.stack([torch.ones(len(labels), dtype=torch.bool, device=labels.device)]
                          + [batch[f"slice/{s}"] for s in slices], 1)
    total = _mean(F.binary_cross_entropy_with_logits(indicator, members.float(), reduction="sum"), members.numel())
    for k in range(members.shape[1]):
        total = total + masked_mean(per_example_loss(spec, experts[:, k], labels), members[:, k].float())
    return total
