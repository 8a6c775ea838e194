"""One training step's loss: the step's batch through the model once, every objective of every task in it,
one reduction of the counts (across processes too), and the mean the whole batch would give in one process.

Every step has one path: a batch of one task is a mixed batch with one task. Under data parallelism each rank
takes every W-th example of each task's part of the global batch; a rank left without a task's examples runs
one of them with weight 0 and counts nothing, so every rank computes the same terms in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from manytask import runtime
from manytask.data.features import collate
from manytask.records import Features
from manytask.training.objectives import TaskObjectives


@dataclass
class StepTask:
    """What a step needs of a task: its training features, objectives and loss weight."""

    train: Features
    objectives: TaskObjectives
    loss_weight: float = 1.0


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's part of a global batch: every W-th example, starting at the rank."""
    return list(indices[runtime.rank()::runtime.world()])


def reduce_means(sums: list[torch.Tensor], counts: list, device: torch.device) -> list[torch.Tensor]:
    """sum / count for every term, the counts summed over processes in one all-reduce and divided by their
    number (so DDP's mean of the ranks' gradients is that of the global mean); zero, not NaN, for a term no
    example carries."""
    den = torch.stack([torch.as_tensor(c, dtype=torch.float32, device=device) for c in counts])
    if runtime.active():
        den = runtime.all_reduce_sum(den) / runtime.world()
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return [torch.where(d > 0, s / q, s * 0.0) for s, d, q in zip(sums, den, safe)]


def step_loss(net, tasks: dict[str, StepTask], step: dict[str, list[int]], pad_id: int, device: torch.device,
              precision: str, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's loss and each objective's value (detached, for the log).

    With several tasks the trunk runs once over the whole batch, each example goes through its own task's
    branch and head, and the loss is the mean over the batch's examples: the sum over tasks of
    loss weight * (n_task / n) * (the task's objectives added up).
    """
    mine = {t: shard(full) for t, full in step.items()}
    absent = {t for t, idx in mine.items() if not idx}  # weight 0 here: one example, so the collectives match
    parts = {t: (tasks[t].train, mine[t] or full[:1]) for t, full in step.items()}
    inputs, batches = collate(parts, pad_id)
    inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    batches = {t: b.to(device) for t, b in batches.items()}
    rows = {t: b.rows for t, b in batches.items() if b.rows is not None} or None
    with runtime.autocast(precision, device.type):
        outputs = net(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=list(step),
                      rows=rows, extras=True)
    sums, counts, spans = [], [], []
    for t in step:
        for objective in tasks[t].objectives:
            terms = objective.terms(outputs[t], batches[t], progress)
            spans.append((t, objective, len(sums), len(terms)))
            sums.extend(s for s, _ in terms)
            counts.extend(0 if t in absent else c for _, c in terms)
    means = reduce_means(sums, counts, device)
    values: dict[str, dict] = {t: {} for t in step}
    for t, objective, start, n in spans:
        values[t][objective.name] = objective.combine(means[start:start + n])
    total = sum(len(full) for full in step.values())
    loss = torch.zeros((), device=device)
    logged = {}
    for t in step:
        own, *extra = list(tasks[t].objectives)
        value = values[t][own.name]
        for objective in extra:
            value = value + objective.weight * values[t][objective.name]
        weight = 0.0 if t in absent else tasks[t].loss_weight
        loss = loss + value * weight * (len(step[t]) / total)
        if t not in absent:
            logged.update({name: v.detach() for name, v in values[t].items()})
    return loss, logged

