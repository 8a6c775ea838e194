"""Classification: one label of a declared set per input; softmax head, cross-entropy, GLUE's metrics."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from manytask.kinds import register_kind
from manytask.kinds.base import LabelError, TaskKind, check_metrics
from manytask.records import Prediction, Predictions

log = logging.getLogger(__name__)


def accuracy(y_true, y_pred) -> float:
    return float(accuracy_score(y_true, y_pred))


def f1(y_true, y_pred) -> float:
    """Binary F1 of class index 1 (the positive class of MRPC and QQP)."""
    return float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))


def f1_macro(y_true, y_pred) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def matthews(y_true, y_pred) -> float:
    return float(matthews_corrcoef(y_true, y_pred))


METRICS = {"accuracy": accuracy, "f1": f1, "f1_macro": f1_macro, "matthews": matthews}


def collapsed(y_pred: Sequence[int], num_classes: int) -> bool:
    """True when every prediction is the same class: a known failure (CoLA) to count, not hide."""
    return num_classes > 1 and len(y_pred) > 1 and len(Counter(int(p) for p in y_pred)) == 1


@register_kind
class Classification(TaskKind):
    name = "classification"
    metric_names = tuple(METRICS)
    class_labels = True

    def validate(self, spec) -> None:
        if not spec.labels or len(spec.labels) < 2:
            raise ValueError(f"task {spec.name!r}: a classification task needs 'labels' (two or more)")
        if len(set(spec.labels)) != len(spec.labels):
            raise ValueError(f"task {spec.name!r}: 'labels' has duplicates")
        check_metrics(self, spec)

    def num_outputs(self, spec) -> int:
        return len(spec.labels)

    def parse_label(self, spec, raw) -> int:
        value = str(raw).strip()
        if isinstance(raw, float) and raw.is_integer():
            value = str(int(raw))
        if value not in spec.labels:
            raise LabelError(f"label {value!r} is not one of the declared labels {spec.labels}")
        return spec.labels.index(value)

    def strata(self, spec, labels) -> np.ndarray:
        return np.asarray(labels, dtype=float).astype(int)

    def per_example_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets.long(), reduction="none")

    def expert_confidence(self, expert_logits):
        """Two classes: the probability of the second (positive) class, as Snorkel's slice combiner takes it;
        more classes (which Snorkel does not support): the probability of the class the expert predicts."""
        probs = torch.softmax(expert_logits, dim=-1)
        return probs[..., 1] if probs.shape[-1] == 2 else probs.max(dim=-1).values

    def soft_target(self, targets: torch.Tensor, teacher: torch.Tensor, lam: float, temperature: float) -> torch.Tensor:
        teacher = teacher.float()
        gold = F.one_hot(targets.long(), num_classes=teacher.shape[-1]).float()
        return lam * gold + (1.0 - lam) * torch.softmax(teacher / temperature, dim=-1)

    def soft_loss(self, logits, targets, teacher, lam, temperature) -> torch.Tensor:
        target = self.soft_target(targets, teacher, lam, temperature)
        return -(target * F.log_softmax(logits.float(), dim=-1)).sum()

    def kd_loss(self, logits, teacher, temperature) -> torch.Tensor:
        logits, teacher = logits.float(), teacher.float()
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                      reduction="sum", log_target=True)
        return kl

    def kd_scale(self, temperature: float) -> float:
        return temperature ** 2

    def decode(self, spec, logits, feats) -> Predictions:
        probs = torch.softmax(torch.stack(logits), dim=-1).numpy()
        return Predictions(feats.ids, probs.argmax(-1), probs)

    def answer(self, spec, preds, i, words=None) -> Prediction:
        return Prediction(spec.name, label=spec.labels[int(preds.values[i])],
                          probs={lab: float(p) for lab, p in zip(spec.labels, preds.probs[i])})

    def cell(self, spec, pred: Prediction) -> str:
        return str(pred.label)

    def combine(self, preds, mode, weights) -> Predictions:
        probs = np.stack([p.probs for p in preds])  # [members, n, classes]
        mean = (weights[:, None, None] * probs).sum(0) if mode == "weighted" else probs.mean(0)
        if mode != "vote":
            return Predictions(preds[0].ids, mean.argmax(-1), mean)
        votes = np.stack([p.values for p in preds])  # [members, n]
        chosen = []
        for i in range(votes.shape[1]):
            counts = Counter(votes[:, i].tolist()).most_common()
            tied = [c for c, k in counts if k == counts[0][1]]
            chosen.append(tied[0] if len(tied) == 1 else max(tied, key=lambda c: mean[i, c]))  # ties: mean probability
        return Predictions(preds[0].ids, np.asarray(chosen), mean)

    def correct(self, preds, feats) -> np.ndarray:
        return np.asarray(preds.values) == np.asarray(feats.labels).astype(int)

    def score(self, spec, preds, feats, title: str = "") -> dict:
        gold = np.asarray(feats.labels, dtype=int)
        if len(gold) != len(preds.values):
            raise ValueError(f"{len(gold)} labels but {len(preds.values)} predictions")
        if len(gold) == 0:
            raise ValueError("no examples to score")
        result = {m: METRICS[m](gold, np.asarray(preds.values)) for m in spec.metrics}
        result["collapsed"] = collapsed(preds.values, len(spec.labels))
        if result["collapsed"]:
            log.warning("%s: every prediction is %r — the classifier collapsed to one class", title or spec.title,
                        spec.labels[int(preds.values[0])])
        result["n"] = len(gold)
        return result

    @classmethod
    def example(cls) -> dict:
        return {"spec": {"labels": ["no", "yes"], "metrics": ["accuracy", "f1"]},
                "raw": ["no", "yes", "yes", "no", "yes", "no"], "bad": "maybe"}
