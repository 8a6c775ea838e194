"""What a task is trained on: a list of objectives, each a named, weighted loss over the task's output.

A task contributes its own objective (its gold labels, or a teacher's soft targets), one per auxiliary label
set, and its slices' (MeTaL's slice heads: the task's kind with non-members' labels masked out; or
slice-based learning's indicators and experts). The trainer knows none of them: it sums what they return.

Every objective gives its loss as terms: ``counts`` (how many examples or tokens carry each term, read off the
batch alone) and ``sums`` (each term summed over them). The trainer adds the counts of a whole step up — over
its micro-batches and its processes, in one reduction — and hands each micro-batch's sums over those counts to
``combine``, which is linear: so each loss is the mean one process would take over the whole batch, however
the batch is split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from manytask.config import DistillConfig, TaskEntry
from manytask.data.features import TaskBatch
from manytask.data.target_store import TargetError, TeacherTargets, targets_path
from manytask.kinds import kind_of
from manytask.kinds.tagging import token_count, token_loss
from manytask.models.multitask import TaskOutput
from manytask.records import Features
from manytask.tasks import TaskSpec


class Objective:
    """One weighted loss of a task. ``weight`` scales it beside the task's own objective (which has weight 1)."""

    name: str = ""
    weight: float = 1.0

    def counts(self, batch: TaskBatch) -> list:
        """Per term, how many carry it in this batch (from its labels and masks; no model output needed)."""
        raise NotImplementedError

    def sums(self, out: TaskOutput, batch: TaskBatch, progress: float) -> list[torch.Tensor]:
        """Per term, the loss summed over what carries it."""
        raise NotImplementedError

    def combine(self, means: list[torch.Tensor]) -> torch.Tensor:
        """The objective's value from its terms' means; linear in them."""
        return means[0]

    def log_state(self, progress: float) -> dict:
        return {}


class GoldObjective(Objective):
    """The task's loss on its gold labels (its kind's: cross-entropy, L2 on [0, 1], token cross-entropy ...)."""

    def __init__(self, spec: TaskSpec):
        self.name, self.kind = spec.name, kind_of(spec)

    def counts(self, batch):
        return [self.kind.count(batch.labels)]

    def sums(self, out, batch, progress):
        return [self.kind.loss(out.logits, batch.labels)]


def teacher_annealing(progress: float, schedule: str = "linear", lam: float = 0.0) -> float:
    """Weight of the gold label at ``progress`` in [0, 1]: rises linearly 0 -> 1, or stays ``lam``."""
    if schedule == "linear":
        return min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return lam
    raise ValueError(f"unknown teacher-annealing schedule {schedule!r} (linear, constant)")


class TeacherObjective(Objective):
    """BAM: the target is lam * gold + (1 - lam) * teacher, lam from the schedule (teacher annealing), with the
    teacher's logits looked up by example id once. ``style: hinton`` is lam * gold loss + (1 - lam) * T^2 * KL.
    ``soft_loss`` and ``kd_loss`` default to the kind's and may be replaced (a test's spy, say)."""

    def __init__(self, spec: TaskSpec, cfg: DistillConfig, teacher: torch.Tensor):
        """``teacher``: the teacher's logits, row i for training example i."""
        self.name, self.kind, self.cfg, self.teacher = spec.name, kind_of(spec), cfg, teacher
        if not self.kind.distillable:
            raise TargetError(f"task {spec.name!r}: distillation of {spec.kind} tasks is not supported")
        self.soft_loss: Callable[..., torch.Tensor] = self.kind.soft_loss
        self.kd_loss: Callable[..., torch.Tensor] = self.kind.kd_loss
        self.gold_loss: Callable[..., torch.Tensor] = self.kind.loss

    @classmethod
    def from_store(cls, spec: TaskSpec, cfg: DistillConfig, train: Features) -> "TeacherObjective":
        """The teacher's logits read from ``cfg.targets``, checked against the task and aligned by example id."""
        if not kind_of(spec).distillable:
            raise TargetError(f"task {spec.name!r}: distillation of {spec.kind} tasks is not supported")
        path = targets_path(Path(cfg.targets), spec.name)
        if not path.is_file():
            raise TargetError(f"task {spec.name!r}: no teacher targets at {path}")
        return cls(spec, cfg, TeacherTargets.load(path).aligned(spec, train.ids, str(path)))

    def lam(self, progress: float) -> float:
        return teacher_annealing(progress, self.cfg.schedule, self.cfg.lam)

    def log_state(self, progress: float) -> dict:
        return {"lambda": self.lam(progress)}

    def _teacher(self, batch: TaskBatch) -> torch.Tensor:
        if self.teacher.device != batch.index.device:  # once: then indexed where the batch is
            self.teacher = self.teacher.to(batch.index.device)
        return self.teacher[batch.index]

    def counts(self, batch):
        n = len(batch.labels)
        return [self.kind.count(batch.labels), n] if self.cfg.style == "hinton" else [n]

    def sums(self, out, batch, progress):
        teacher, lam = self._teacher(batch), self.lam(progress)
        self._lam = lam
        if self.cfg.style == "hinton":
            return [self.gold_loss(out.logits, batch.labels), self.kd_loss(out.logits, teacher, self.cfg.temperature)]
        return [self.soft_loss(out.logits, batch.labels, teacher, lam, self.cfg.temperature)]

    def combine(self, means):
        if self.cfg.style == "hinton":
            return self._lam * means[0] + (1.0 - self._lam) * (means[1] * self.kind.kd_scale(self.cfg.temperature))
        return means[0]


class AuxiliaryObjective(Objective):
    """Silver token labels over the task's text, learnt by a training-only head (MeTaL's auxiliary tasks)."""

    def __init__(self, task: str, label_set: str, weight: float):
        self.name, self.label_set, self.weight = f"{task}/{label_set}", label_set, weight

    def counts(self, batch):
        return [token_count(batch.aux[self.label_set])]

    def sums(self, out, batch, progress):
        return [token_loss(out.aux[self.label_set], batch.aux[self.label_set])]


class SliceHeadsObjective(Objective):
    """MeTaL's slice heads: each slice's head learns the task on the slice's members only (the task's kind with
    the labels of non-members masked out, as Snorkel compiles a slice into an ordinary task); summed."""

    def __init__(self, spec: TaskSpec, slices: list[str], weight: float):
        self.name, self.kind, self.slices, self.weight = f"{spec.name}/slices", kind_of(spec), slices, weight

    def counts(self, batch):
        return [batch.slices[s].float().sum() for s in self.slices]

    def sums(self, out, batch, progress):
        return [(self.kind.per_example_loss(out.slices[s], batch.labels) * batch.slices[s].float()).sum()
                for s in self.slices]

    def combine(self, means):
        total = torch.zeros((), device=means[0].device)
        for m in means:
            total = total + m
        return total


class SliceBasedObjective(Objective):
    """Slice-based learning (Chen et al. 2019), as Snorkel compiles it: per slot (the base slice, holding every
    example, then each slice) an indicator task — is the example in the slice? — with its own batch-mean loss,
    and an expert task on the slice's members only; every task's loss is added up."""

    def __init__(self, spec: TaskSpec, slices: list[str], weight: float):
        self.name, self.kind, self.slices, self.weight = f"{spec.name}/slices", kind_of(spec), slices, weight

    def _members(self, batch) -> torch.Tensor:
        every = torch.ones(len(batch.labels), dtype=torch.bool, device=batch.labels.device)
        return torch.stack([every] + [batch.slices[s] for s in self.slices], 1)

    def counts(self, batch):
        members = self._members(batch).float()
        return [len(batch.labels)] * members.shape[1] + [members[:, k].sum() for k in range(members.shape[1])]

    def sums(self, out, batch, progress):
        indicator, experts, members = out.sbl.indicator.float(), out.sbl.experts, self._members(batch)
        out_sums = [F.binary_cross_entropy_with_logits(indicator[:, k], members[:, k].float(), reduction="sum")
                    for k in range(members.shape[1])]
        return out_sums + [(self.kind.per_example_loss(experts[:, k], batch.labels) * members[:, k].float()).sum()
                           for k in range(members.shape[1])]

    def combine(self, means):
        total = means[0]
        for m in means[1:]:
            total = total + m
        return total


def value(objective: Objective, out: TaskOutput, batch: TaskBatch, progress: float = 0.0) -> torch.Tensor:
    """The objective on one batch in one process: each term's sum over its count (zero where nothing counts),
    combined. The trainer does the same with the counts reduced over the step's processes."""
    means = []
    for s, c in zip(objective.sums(out, batch, progress), objective.counts(batch)):
        c = torch.as_tensor(c, dtype=torch.float32, device=s.device)
        means.append(s / c if c > 0 else s * 0.0)
    return objective.combine(means)


@dataclass
class TaskObjectives:
    """A task's objectives in the order they are added up: its own first, then auxiliary, then slices."""

    own: Objective
    extra: list[Objective]

    def __iter__(self):
        return iter([self.own, *self.extra])


def task_objectives(spec: TaskSpec, entry: TaskEntry, train: Features, distill: Optional[DistillConfig] = None
                    ) -> TaskObjectives:
    """The objectives a task's config entry asks for."""
    own = TeacherObjective.from_store(spec, distill, train) if distill is not None else GoldObjective(spec)
    extra: list[Objective] = [AuxiliaryObjective(spec.name, a.name, a.weight) for a in entry.auxiliary]
    slices = entry.slices
    if slices is not None and slices.mode in ("heads", "sbl"):
        names = [f.name for f in slices.functions]
        cls = SliceHeadsObjective if slices.mode == "heads" else SliceBasedObjective
        extra.append(cls(spec, names, slices.weight))
    return TaskObjectives(own, extra)
