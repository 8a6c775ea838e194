"""What a task *kind* is: everything that differs between classification, regression, tagging, ... lives in
one subclass of ``TaskKind``, registered by name. The rest of manytask asks the kind and never branches on it.

A kind owns: checking a task declaration and its default metrics; reading and checking a label; the training
target and the strata of a re-split; its head; its loss (as a sum and a count, so several objectives and
several processes reduce once) and its distillation losses; decoding logits into predictions; the answer an
input gets (API, server) and its line in a prediction or submission file; its metrics.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import nn

from manytask.errors import ManytaskError
from manytask.records import Features, Prediction, Predictions


class LabelError(ManytaskError, ValueError):
    """A label a kind cannot read; the reader adds file, line and field."""


class PooledHead(nn.Module):
    """Dropout + linear over the pooled vector: the head of sentence-level kinds."""

    pools = True  # reads the pooled vector (a token head reads every token)

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))


class TokenHead(PooledHead):
    """Dropout + linear at every token: logits [batch, tokens, labels] (tagging, auxiliary label sets)."""

    pools = False


class TaskKind:
    """The behaviour of one kind of task; subclasses register with ``@register_kind``."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    head_name: ClassVar[str] = "linear"  # recorded in a bundle's task.json, so a reader never guesses it
    word_level: ClassVar[bool] = False  # reads pre-split words and answers per word (a token head)
    distillable: ClassVar[bool] = True  # a teacher's logits can be written and learnt from
    sliceable: ClassVar[bool] = True  # slice heads and slice-based learning (they need a per-example loss)
    ensemblable: ClassVar[bool] = True
    class_labels: ClassVar[bool] = False  # one label of a declared set per input (labeling functions vote these)
    default_fields: ClassVar[tuple[Optional[list], Optional[str]]] = (None, None)  # text fields, label field

    # ---- the task declaration ----------------------------------------------------------------------------
    def validate(self, spec) -> None:
        """Raise ValueError naming the task when its declaration cannot be used by this kind."""

    def default_metrics(self, spec) -> list[str]:
        return [self.metric_names[0]]

    def num_outputs(self, spec) -> int:
        raise NotImplementedError

    # ---- data ---------------------------------------------------------------------------------------------
    def parse_label(self, spec, raw) -> Any:
        """A label as written in a file -> what the example keeps; raises LabelError."""
        raise NotImplementedError

    def infer_labels(self, labels: Sequence) -> Optional[list[str]]:
        """The label set read off a training file's labels, for kinds that may leave it undeclared."""
        return None

    def target(self, spec, label) -> Any:
        """An example's label -> the training target the features carry."""
        return float(label)

    def strata(self, spec, labels: Sequence) -> np.ndarray:
        """Groups a seeded re-split keeps in proportion (one group: no stratification)."""
        return np.zeros(len(labels), dtype=int)

    # ---- model and losses ---------------------------------------------------------------------------------
    def make_head(self, hidden_size: int, num_outputs: int, dropout: float) -> nn.Module:
        return (TokenHead if self.word_level else PooledHead)(hidden_size, num_outputs, dropout)

    def probe_shape(self, spec, batch: int, tokens: int) -> tuple[int, ...]:
        """The logits' shape for a batch: what a bundle checks a new task's probe pass against."""
        return (batch, tokens, self.num_outputs(spec)) if self.word_level else (batch, self.num_outputs(spec))

    def shape_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A linear layer's [..., outputs] -> the logits this kind's losses and decoding read."""
        return logits

    def expert_confidence(self, expert_logits: torch.Tensor) -> torch.Tensor:
        """Slice-based learning: how sure each slice expert is, [batch, slices] (1: the indicators alone attend)."""
        return torch.ones(expert_logits.shape[:2], dtype=expert_logits.dtype, device=expert_logits.device)

    def per_example_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"a {self.name} task has no per-example loss")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The gold loss summed over what carries it (``count``): the mean is taken once the step's counts are
        reduced, so a batch split over micro-batches or processes gives the mean of the whole batch."""
        return self.per_example_loss(logits, targets).sum()

    def count(self, targets: torch.Tensor) -> int:
        """How many carry the loss: the examples (or, for word-level kinds, the labelled tokens)."""
        return len(targets)

    def soft_loss(self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor, lam: float,
                  temperature: float) -> torch.Tensor:
        """BAM: the loss against lam * gold + (1 - lam) * teacher, summed over the examples."""
        raise NotImplementedError(f"{self.name} tasks cannot be distilled")

    def kd_loss(self, logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Hinton et al.: the student's distance to the teacher, summed over the examples (its T^2 factor is
        ``kd_scale``)."""
        raise NotImplementedError(f"{self.name} tasks cannot be distilled")

    def kd_scale(self, temperature: float) -> float:
        return 1.0

    # ---- predictions and answers ---------------------------------------------------------------------------
    def decode(self, spec, logits: list[torch.Tensor], feats: Features) -> Predictions:
        """Per-example logits (float, CPU, in the order of ``feats``) -> predictions to score and answer."""
        raise NotImplementedError

    def teacher_logits(self, logits: list[torch.Tensor]) -> np.ndarray:
        """Per-example logits -> the [n, outputs] array a teacher-target store keeps."""
        stacked = torch.stack(logits)
        return stacked.reshape(len(logits), -1).numpy()

    def answer(self, spec, preds: Predictions, i: int, words: Optional[list[str]] = None) -> Prediction:
        raise NotImplementedError

    def cell(self, spec, pred: Prediction) -> str:
        """The prediction as one cell of a TSV file (submission, prediction file)."""
        raise NotImplementedError

    def prediction_file(self, spec, keys: Sequence[str], preds: Sequence[Prediction], jsonl: bool) -> str:
        """A prediction file's text: JSONL (one object a line) or TSV with the probabilities as columns."""
        import json

        probs_columns = [l for l in (spec.labels or [])] if preds and isinstance(preds[0].probs, dict) else []
        if jsonl:
            rows = []
            for key, p in zip(keys, preds):
                row: dict = {"id": key, "prediction": self.json_value(p)}
                if isinstance(p.probs, dict):
                    row["probabilities"] = {lab: round(float(v), 6) for lab, v in p.probs.items()}
                rows.append(json.dumps(row))
            return "\n".join(rows) + "\n"
        lines = ["id\tprediction" + "".join(f"\tp_{lab}" for lab in probs_columns)]
        for key, p in zip(keys, preds):
            probs = "".join(f"\t{p.probs[lab]:.6f}" for lab in probs_columns) if probs_columns else ""  # type: ignore[index]
            lines.append(f"{key}\t{self.cell(spec, p)}{probs}")
        return "\n".join(lines) + "\n"

    def json_value(self, pred: Prediction):
        return pred.label if pred.label is not None else pred.score

    def combine(self, preds: Sequence[Predictions], mode: str, weights: np.ndarray) -> Predictions:
        """An ensemble's predictions from its members' (``weights`` sum to 1): ``mean``, ``vote`` or ``weighted``."""
        raise NotImplementedError(f"ensembles of {self.name} tasks are not supported")

    def correct(self, preds: Predictions, feats: Features) -> Optional[np.ndarray]:
        """Per example, is the prediction right? (for McNemar's test); None where right/wrong does not apply."""
        return None

    # ---- scores -------------------------------------------------------------------------------------------
    def score(self, spec, preds: Predictions, feats: Features, title: str = "") -> dict:
        """The task's metrics on one split (``n`` and ``collapsed`` included)."""
        raise NotImplementedError

    # ---- a worked example: the shared test of every kind runs it ------------------------------------------
    @classmethod
    def example(cls) -> dict:
        """A small task of this kind: ``spec`` (TaskSpec fields), ``raw`` labels as a file writes them, a
        ``bad`` label the kind refuses and, for word-level kinds, ``words`` per example. The kinds' shared test
        (tests/test_kinds.py) reads, trains, decodes, answers and scores it."""
        raise NotImplementedError


def check_metrics(kind: TaskKind, spec) -> None:
    for m in list(spec.metrics) + ([spec.primary_metric] if spec.primary_metric else []):
        if m not in kind.metric_names:
            raise ValueError(f"task {spec.name!r}: {m!r} is not a {kind.name} metric "
                             f"(known: {', '.join(kind.metric_names)})")
