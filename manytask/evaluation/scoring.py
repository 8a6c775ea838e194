"""Score a model on a task's data: run it over a split, decode with the task's kind, take the metrics, and the
metrics on each slice. Training, ``eval``, serving's precision check, ensembles and the benchmarks all score
through ``evaluate_features`` (features at hand) or ``evaluate_data`` (examples read from files).
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from manytask import runtime
from manytask.config import SMALL_SLICE
from manytask.data.features import encode, pad_inputs
from manytask.data.slices import membership
from manytask.evaluation.metrics import glue_average
from manytask.kinds import kind_of
from manytask.models.multitask import MultiTaskModel
from manytask.records import Features, Predictions
from manytask.runtime import autocast
from manytask.tasks import TaskSpec


def _batches(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
             precision: str, share: Optional[list[int]] = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(example indices, their logits as float on the CPU) batch by batch, in eval mode; batches are
    length-sorted to pad little. ``share``: only these examples. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = np.arange(len(feats)) if share is None else np.asarray(share, dtype=int)
    order = rows[np.argsort([-feats.lengths[i] for i in rows], kind="stable")]
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size].tolist()
            batch = {k: v.to(device) for k, v in pad_inputs(feats, idx, pad_id).items()}
            with torch.no_grad(), autocast(precision, device.type):
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[spec.name])
            yield idx, out[spec.name].logits.float().cpu()
    finally:
        model.train(was_training)


def predict_outputs(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
                    precision: str = "fp32", sharded: bool = False) -> list[torch.Tensor]:
    """Each example's logits, in the order of ``feats``. ``sharded`` (under data parallelism): every rank
    predicts every W-th example and the logits are gathered, so every rank gets them all."""
    share = list(range(runtime.rank(), len(feats), runtime.world())) if sharded and runtime.world() > 1 else None
    outputs: list[Optional[torch.Tensor]] = [None] * len(feats)
    mine = []
    for idx, logits in _batches(model, spec, feats, batch_size, pad_id, precision, share):
        for row, i in enumerate(idx):
            outputs[i] = logits[row]
            mine.append(i)
    if share is not None:
        for part in runtime.gather([(i, outputs[i]) for i in mine]):
            for i, row in part:
                outputs[i] = row
    return outputs  # type: ignore[return-value]


def predict(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
            precision: str = "fp32", sharded: bool = False) -> Predictions:
    """Predictions as the task's kind decodes them."""
    outputs = predict_outputs(model, spec, feats, batch_size, pad_id, precision, sharded)
    return kind_of(spec).decode(spec, outputs, feats)


def predict_logits(model: MultiTaskModel, spec: TaskSpec, feats: Features, batch_size: int, pad_id: int,
                   precision: str = "fp32") -> torch.Tensor:
    """Raw logits [n, outputs] in the order of ``feats`` (what a teacher-target store keeps)."""
    outputs = predict_outputs(model, spec, feats, batch_size, pad_id, precision)
    return torch.from_numpy(kind_of(spec).teacher_logits(outputs))


def score(spec: TaskSpec, preds: Predictions, feats: Features, title: str = "") -> dict:
    """Metrics of one split; a collapsed classifier (one class for every input) is flagged and warned about."""
    if feats.labels is None:
        raise ValueError(f"{title or spec.name}: split has no labels to score")
    return kind_of(spec).score(spec, preds, feats, title)


def slice_scores(spec: TaskSpec, preds: Predictions, feats: Features, min_size: int = SMALL_SLICE) -> dict[str, dict]:
    """The task's metrics on each slice's members, with its size; slices under ``min_size`` are flagged."""
    out = {}
    for name, members in feats.slices.items():
        keep = [i for i, m in enumerate(members) if m]
        entry: dict = {"n": len(keep), "too_small": len(keep) < min_size}
        if keep:
            metrics = score(spec, preds.subset(keep), feats.subset(keep), f"{spec.title} slice {name}")
            entry.update({k: v for k, v in metrics.items() if k not in ("n", "collapsed")})
        out[name] = entry
    return out


def evaluate_features(model: MultiTaskModel, spec: TaskSpec, evals: dict[str, Features], titles: dict[str, str],
                      batch_size: int, pad_id: int, precision: str = "fp32", slice_min: int = SMALL_SLICE,
                      sharded: bool = False) -> dict[str, dict]:
    """Metrics of every evaluation split of one task, and of each of its slices (``sharded``: see
    ``predict_outputs``)."""
    out = {}
    for split, feats in evals.items():
        preds = predict(model, spec, feats, batch_size, pad_id, precision, sharded)
        out[split] = score(spec, preds, feats, titles[split])
        if feats.slices:
            out[split]["slices"] = slice_scores(spec, preds, feats, slice_min)
    return out


def encode_evals(data, tokenizer, max_length: int) -> dict[str, Features]:
    """A loaded task's evaluation splits as features, with slice membership where the task has slices."""
    evals = {s: encode(ex, data.spec, tokenizer, max_length) for s, ex in data.evals.items()}
    if data.entry.slices is not None:
        for s, ex in data.evals.items():
            evals[s].slices = membership(data.entry.slices, ex)
    return evals


def evaluate_data(model: MultiTaskModel, data, tokenizer, max_length: int, batch_size: int,
                  precision: str = "fp32") -> dict[str, dict]:
    """A loaded task's (``TaskData``) evaluation splits scored with ``model``: the one way to score a model
    on a task's dev data from its files."""
    slice_min = data.entry.slices.min_size if data.entry.slices is not None else SMALL_SLICE
    return evaluate_features(model, data.spec, encode_evals(data, tokenizer, max_length), data.eval_titles,
                             batch_size, tokenizer.pad_token_id, precision, slice_min)


def summarize(results: dict[str, dict[str, dict]], specs: dict[str, TaskSpec]) -> dict:
    """Per-task primary score (mean over a task's dev sets) and the GLUE-style average."""
    primary = {n: float(np.mean([m[specs[n].primary] for m in per_split.values()])) for n, per_split in results.items()}
    excluded = [n for n in results if not specs[n].in_average]
    return {"tasks": results, "primary": primary, "average": glue_average(primary, excluded)}
