"""GLUE's official metrics (scikit-learn / scipy) and the GLUE average as BAM reports it."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

log = logging.getLogger(__name__)


def _acc(y_true, y_pred) -> float:
    return float(accuracy_score(y_true, y_pred))


def _f1(y_true, y_pred) -> float:
    """Binary F1 of class index 1 (the positive class of MRPC and QQP)."""
    return float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))


def _f1_macro(y_true, y_pred) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _mcc(y_true, y_pred) -> float:
    return float(matthews_corrcoef(y_true, y_pred))


def _correlation(fn) -> Callable:
    def metric(y_true, y_pred) -> float:
        # a constant prediction has no correlation; scipy would warn and return nan
        if np.std(y_pred) == 0 or np.std(y_true) == 0:
            return 0.0
        return float(fn(y_true, y_pred)[0])

    return metric


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": _acc,
    "f1": _f1,
    "f1_macro": _f1_macro,
    "matthews": _mcc,
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}


METRICS_BY_KIND: dict[str, list[str]] = {
    "classification": ["accuracy", "f1", "f1_macro", "matthews"],
    "regression": ["pearson", "spearman"],
    "tagging": ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"],  # see evaluation/tagging.py
}


def compute_metrics(names: Sequence[str], y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no examples to score")
    return {n: METRICS[n](np.asarray(y_true), np.asarray(y_pred)) for n in names}


def collapsed(y_pred: Sequence[int], num_classes: int) -> bool:
    """True when every prediction is the same class: a known failure (CoLA) to count, not hide."""
    return num_classes > 1 and len(y_pred) > 1 and len(Counter(int(p) for p in y_pred)) == 1


def glue_average(per_task_primary: dict[str, float], excluded: Sequence[str] = ()) -> float:
    """Mean of per-task primary scores (Matthews for CoLA, Spearman for STS-B, accuracy elsewhere).

    A task with several dev sets (MNLI-m and MNLI-mm) enters once, as the mean of its sets.
    WNLI is excluded, as BAM does. Returns nan when no task is left.
    """
    kept = [v for k, v in per_task_primary.items() if k not in excluded]
    return float(np.mean(kept)) if kept else math.nan
