"""Run a model over a task split and score it: predictions, probabilities and metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from manytask.data.features import Features, collate
from manytask.evaluation.metrics import collapsed, compute_metrics, glue_average
from manytask.evaluation.tagging import tagging_metrics
from manytask.models.multitask import MultiTaskModel
from manytask.tasks import TaskSpec
from manytask.training.devices import autocast

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    ids: list[str]
    values: Any  # class index or score on the task's own range (an array); tagging: per word a tag index or None
    probs: Any  # classification: class probabilities; tagging: per word the chosen tag's probability


def _batches(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int, precision: str):
    """(example indices, their logits as float on the CPU) batch by batch, in eval mode; batches are
    length-sorted to pad little. The model's train/eval mode is restored at the end."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([-n for n in feats.lengths], kind="stable")
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size].tolist()
            batch = {k: v.to(device) for k, v in collate(feats, idx, pad_id).items()}
            with torch.no_grad(), autocast(precision, device.type):
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               tasks=[spec.name])[spec.name]
            yield idx, logits.float().cpu()
    finally:
        model.train(was_training)


def predict_logits(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
                   precision: str = "fp32") -> torch.Tensor:
    """Raw logits [n, outputs] in the order of ``feats``."""
    outputs: list[Optional[torch.Tensor]] = [None] * len(feats)
    for idx, logits in _batches(model, spec, feats, batch_size, pad_id, precision):
        for row, i in enumerate(idx):
            outputs[i] = logits.reshape(len(idx), -1)[row]
    return torch.stack(outputs)  # type: ignore[arg-type]


def predict_tags(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
                 precision: str = "fp32") -> Predictions:
    """Per word: the tag read off its first piece and that tag's probability; None for an unseen word."""
    tags: list = [None] * len(feats)
    probs: list = [None] * len(feats)
    for idx, logits in _batches(model, spec, feats, batch_size, pad_id, precision):
        best_p, best = torch.softmax(logits, dim=-1).max(dim=-1)
        for row, i in enumerate(idx):
            first = feats.first_piece[i]  # type: ignore[index]
            tags[i] = [int(best[row, pos]) if pos >= 0 else None for pos in first]
            probs[i] = [float(best_p[row, pos]) if pos >= 0 else None for pos in first]
    return Predictions(feats.ids, tags, probs)


def predict(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
            precision: str = "fp32") -> Predictions:
    if spec.kind == "tagging":
        return predict_tags(model, spec, feats, batch_size, pad_id, precision)
    stacked = predict_logits(model, spec, feats, batch_size, pad_id, precision)
    if spec.kind == "classification":
        probs = torch.softmax(stacked, dim=-1).numpy()
        return Predictions(feats.ids, probs.argmax(-1), probs)
    scores = np.array([spec.unscale(v) for v in torch.sigmoid(stacked[:, 0]).numpy()])
    return Predictions(feats.ids, scores, None)


def score(spec: TaskSpec, preds: Predictions, feats: Features, title: str = "") -> dict:
    """Metrics of one split; a collapsed classifier (one class for every input) is flagged and warned about."""
    if feats.labels is None:
        raise ValueError(f"{title or spec.name}: split has no labels to score")
    if spec.kind == "tagging":
        labels = spec.labels or []
        gold = [[labels[t] for t in row] for row in feats.word_labels]  # type: ignore[union-attr]
        pred = [[labels[t] if t is not None else None for t in row] for row in preds.values]
        result = tagging_metrics(gold, pred, spec.metrics, labels)
        if result["unscored_words"]:
            log.warning("%s: %d of %d words lie beyond the length limit or have no word piece: scored as wrong",
                        title or spec.title, result["unscored_words"], result["words"])
        return {**result, "collapsed": False, "n": len(gold)}
    if spec.kind == "classification":
        gold = np.asarray(feats.labels, dtype=int)
    else:
        gold = np.array([spec.unscale(v) for v in feats.labels])
    result = compute_metrics(spec.metrics, gold, preds.values)
    result["collapsed"] = bool(spec.kind == "classification" and collapsed(preds.values, spec.num_outputs))
    if result["collapsed"]:
        log.warning("%s: every prediction is %r — the classifier collapsed to one class", title or spec.title,
                    spec.labels[int(preds.values[0])] if spec.labels else preds.values[0])
    result["n"] = len(gold)
    return result


def evaluate_task(model: MultiTaskModel, spec: TaskSpec, evals: dict[str, Features], titles: dict[str, str],
                  batch_size: int, pad_id: int, precision: str = "fp32", slice_min: int = 30) -> dict[str, dict]:
    """Metrics of every evaluation split of one task, and of each of its slices."""
    out = {}
    for split, feats in evals.items():
        preds = predict(model, spec, feats, batch_size, pad_id, precision)
        out[split] = score(spec, preds, feats, titles[split])
        if feats.slices:
            out[split]["slices"] = slice_scores(spec, preds, feats, slice_min)
    return out


def _subset(feats: Features, preds: Predictions, keep: list[int]) -> tuple[Features, Predictions]:
    pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
    sub = Features([feats.ids[i] for i in keep], pick(feats.input_ids), pick(feats.token_type_ids), pick(feats.labels),
                   pick(feats.first_piece), pick(feats.word_labels))
    values = [preds.values[i] for i in keep] if isinstance(preds.values, list) else preds.values[keep]
    probs = None if preds.probs is None else ([preds.probs[i] for i in keep] if isinstance(preds.probs, list)
                                               else preds.probs[keep])
    return sub, Predictions(sub.ids, values, probs)


def slice_scores(spec: TaskSpec, preds: Predictions, feats: Features, min_size: int = 30) -> dict[str, dict]:
    """The task's metrics on each slice's members, with its size; slices under ``min_size`` are flagged."""
    out = {}
    for name, members in feats.slices.items():
        keep = [i for i, m in enumerate(members) if m]
        entry: dict = {"n": len(keep), "too_small": len(keep) < min_size}
        if keep:
            sub, sub_preds = _subset(feats, preds, keep)
            metrics = score(spec, sub_preds, sub, f"{spec.title} slice {name}")
            entry.update({k: v for k, v in metrics.items() if k not in ("n", "collapsed")})
        out[name] = entry
    return out


def summarize(results: dict[str, dict[str, dict]], specs: dict[str, TaskSpec]) -> dict:
    """Per-task primary score (mean over a task's dev sets) and the GLUE-style average."""
    primary = {n: float(np.mean([m[specs[n].primary] for m in per_split.values()])) for n, per_split in results.items()}
    excluded = [n for n in results if not specs[n].in_average]
    return {"tasks": results, "primary": primary, "average": glue_average(primary, excluded)}
