"""Regression: a score on a declared range, scaled to [0, 1] and predicted through a sigmoid (as BAM does);
L2 losses, Pearson and Spearman correlations."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from manytask.kinds import register_kind
from manytask.kinds.base import LabelError, PooledHead, TaskKind, check_metrics
from manytask.records import Prediction, Predictions


def _correlation(fn):
    def metric(y_true, y_pred) -> float:
        # a constant prediction has no correlation; scipy would warn and return nan
        if np.std(y_pred) == 0 or np.std(y_true) == 0:
            return 0.0
        return float(fn(y_true, y_pred)[0])

    return metric


METRICS = {"pearson": _correlation(pearsonr), "spearman": _correlation(spearmanr)}


class ScoreHead(PooledHead):
    """One logit per input; the prediction is its sigmoid, on labels scaled to [0, 1]."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__(hidden_size, 1, dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return super().forward(pooled).squeeze(-1)


def scale(spec, value: float) -> float:
    """A score on the task's range -> [0, 1], the sigmoid's range."""
    lo, hi = spec.label_range
    return (value - lo) / (hi - lo)


def unscale(spec, value: float) -> float:
    lo, hi = spec.label_range
    return lo + value * (hi - lo)


@register_kind
class Regression(TaskKind):
    name = "regression"
    metric_names = tuple(METRICS)

    def validate(self, spec) -> None:
        if spec.label_range is None:
            raise ValueError(f"task {spec.name!r}: a regression task needs 'label_range: [low, high]'")
        lo, hi = spec.label_range
        if not hi > lo:
            raise ValueError(f"task {spec.name!r}: label_range must be [low, high] with high > low")
        check_metrics(self, spec)

    def default_metrics(self, spec) -> list[str]:
        return ["pearson", "spearman"]

    def num_outputs(self, spec) -> int:
        return 1

    def parse_label(self, spec, raw) -> float:
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise LabelError(f"expected a number, found {raw!r}") from None
        lo, hi = spec.label_range
        if math.isnan(score) or not lo <= score <= hi:
            raise LabelError(f"score {score} is outside the declared label_range [{lo}, {hi}]")
        return score

    def target(self, spec, label) -> float:
        return scale(spec, float(label))

    def strata(self, spec, labels) -> np.ndarray:
        values = np.asarray(labels, dtype=float)
        edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])  # stratify by score quintile
        return np.digitize(values, edges)

    def make_head(self, hidden_size, num_outputs, dropout):
        return ScoreHead(hidden_size, num_outputs, dropout)

    def shape_logits(self, logits):
        return logits.squeeze(-1)

    def probe_shape(self, spec, batch, tokens):
        return (batch,)

    def per_example_loss(self, logits, targets):
        return (torch.sigmoid(logits.float()) - targets.float()) ** 2

    def soft_loss(self, logits, targets, teacher, lam, temperature) -> torch.Tensor:
        teacher = torch.sigmoid(teacher.float().reshape(targets.shape))
        target = lam * targets.float() + (1.0 - lam) * teacher
        return ((torch.sigmoid(logits.float()) - target) ** 2).sum()

    def kd_loss(self, logits, teacher, temperature) -> torch.Tensor:
        """No temperature for a score: L2 to the teacher's score."""
        logits = logits.float()
        return ((torch.sigmoid(logits) - torch.sigmoid(teacher.float().reshape(logits.shape))) ** 2).sum()

    def decode(self, spec, logits, feats) -> Predictions:
        stacked = torch.stack(logits).reshape(len(logits), -1)
        scores = np.array([unscale(spec, v) for v in torch.sigmoid(stacked[:, 0]).numpy()])
        return Predictions(feats.ids, scores, None)

    def answer(self, spec, preds, i, words=None) -> Prediction:
        return Prediction(spec.name, score=float(preds.values[i]))

    def cell(self, spec, pred: Prediction) -> str:
        return f"{float(pred.score):.3f}"

    def combine(self, preds, mode, weights) -> Predictions:
        values = np.stack([p.values for p in preds])  # a vote on scores is their mean
        return Predictions(preds[0].ids, (weights[:, None] * values).sum(0) if mode == "weighted" else values.mean(0),
                           None)

    def json_value(self, pred: Prediction):
        return round(float(pred.score), 6)

    def score(self, spec, preds, feats, title: str = "") -> dict:
        gold = np.array([unscale(spec, v) for v in feats.labels])
        if len(gold) != len(preds.values):
            raise ValueError(f"{len(gold)} labels but {len(preds.values)} predictions")
        if len(gold) == 0:
            raise ValueError("no examples to score")
        result = {m: METRICS[m](gold, np.asarray(preds.values)) for m in spec.metrics}
        return {**result, "collapsed": False, "n": len(gold)}

    @classmethod
    def example(cls) -> dict:
        return {"spec": {"label_range": [0.0, 5.0]}, "raw": ["0.5", "4.0", "2.5", "5", "1.25", "3"], "bad": "high"}
