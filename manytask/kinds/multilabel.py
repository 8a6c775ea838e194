"""Multi-label classification: any subset of a declared label set per input (topics, intents, attributes).

A label is written as a list (JSONL) or as labels joined by ``|`` (``sports|tech``; empty: none of them). One
sigmoid per label with binary cross-entropy (mean over the labels), predicted where the probability is 0.5 or
more; micro and macro F1, subset (exact-match) accuracy and Hamming accuracy. This kind is one file: nothing
else in manytask names it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, hamming_loss

from manytask.kinds import register_kind
from manytask.kinds.base import LabelError, TaskKind, check_metrics
from manytask.records import Prediction, Predictions

SEPARATOR = "|"
THRESHOLD = 0.5

METRICS = {
    "f1_micro": lambda y, p: float(f1_score(y, p, average="micro", zero_division=0)),
    "f1_macro": lambda y, p: float(f1_score(y, p, average="macro", zero_division=0)),
    "subset_accuracy": lambda y, p: float(accuracy_score(y, p)),
    "hamming_accuracy": lambda y, p: 1.0 - float(hamming_loss(y, p)),
}


@register_kind
class MultiLabel(TaskKind):
    name = "multilabel"
    metric_names = tuple(METRICS)

    def validate(self, spec) -> None:
        if not spec.labels or len(spec.labels) < 2 or len(set(spec.labels)) != len(spec.labels):
            raise ValueError(f"task {spec.name!r}: a multilabel task needs 'labels' (two or more, distinct)")
        if any(SEPARATOR in lab for lab in spec.labels):
            raise ValueError(f"task {spec.name!r}: a label may not contain {SEPARATOR!r} (it separates labels)")
        check_metrics(self, spec)

    def default_metrics(self, spec) -> list[str]:
        return ["f1_micro", "f1_macro", "subset_accuracy"]

    def num_outputs(self, spec) -> int:
        return len(spec.labels)

    def parse_label(self, spec, raw) -> list[int]:
        names = raw if isinstance(raw, list) else [x.strip() for x in str(raw).split(SEPARATOR) if x.strip()]
        unknown = [str(x) for x in names if str(x) not in spec.labels]
        if unknown:
            raise LabelError(f"label(s) {unknown} not among the declared labels {spec.labels}")
        return sorted({spec.labels.index(str(x)) for x in names})

    def target(self, spec, label) -> list[float]:
        hot = [0.0] * len(spec.labels)
        for i in label:
            hot[i] = 1.0
        return hot

    def per_example_loss(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(-1)

    def soft_loss(self, logits, targets, teacher, lam, temperature) -> torch.Tensor:
        target = lam * targets.float() + (1.0 - lam) * torch.sigmoid(teacher.float() / temperature)
        return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(-1).sum()

    def kd_loss(self, logits, teacher, temperature) -> torch.Tensor:
        soft = torch.sigmoid(teacher.float() / temperature)
        per = F.binary_cross_entropy_with_logits(logits.float() / temperature, soft, reduction="none").mean(-1)
        return per.sum()

    def kd_scale(self, temperature: float) -> float:
        return temperature ** 2

    def decode(self, spec, logits, feats) -> Predictions:
        probs = torch.sigmoid(torch.stack(logits)).numpy()
        return Predictions(feats.ids, probs >= THRESHOLD, probs)

    def answer(self, spec, preds, i, words=None) -> Prediction:
        chosen = [lab for lab, on in zip(spec.labels, preds.values[i]) if on]
        return Prediction(spec.name, label=chosen, probs={lab: float(p) for lab, p in zip(spec.labels, preds.probs[i])})

    def cell(self, spec, pred: Prediction) -> str:
        return SEPARATOR.join(pred.label or [])

    def combine(self, preds, mode, weights) -> Predictions:
        probs = np.stack([p.probs for p in preds])
        mean = (weights[:, None, None] * probs).sum(0) if mode == "weighted" else probs.mean(0)
        return Predictions(preds[0].ids, mean >= THRESHOLD, mean)

    def correct(self, preds, feats) -> np.ndarray:
        return (np.asarray(preds.values) == (np.asarray(feats.labels) >= THRESHOLD)).all(-1)

    def score(self, spec, preds, feats, title: str = "") -> dict:
        gold = np.asarray(feats.labels) >= THRESHOLD
        pred = np.asarray(preds.values, dtype=bool)
        if gold.shape != pred.shape or len(gold) == 0:
            raise ValueError(f"{title or spec.title}: {len(gold)} labels but {len(pred)} predictions")
        return {**{m: METRICS[m](gold, pred) for m in spec.metrics}, "collapsed": False, "n": len(gold)}

    @classmethod
    def example(cls) -> dict:
        return {"spec": {"labels": ["sports", "politics", "tech"]},
                "raw": ["sports", "politics|tech", "", "tech", "sports|tech", "politics"], "bad": "weather"}
