"""Serving precision: fp32, bf16 (autocast; on a CPU only where native), int8 / int8-channel (dynamic
quantisation of the trunk's and branches' linear layers, per tensor or per output channel, done once at load;
heads stay fp32) or auto (a precision plan, ``plan``), and each task's dev score under it, so a precision that
costs a task more than a stated tolerance is refused unless forced.

Scores are cached in ``BUNDLE/scores/<task dir>.<precision>.<device type>.json`` (elsewhere for a bundle this
process cannot write): a changed task has a new directory, so its score is computed again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from manytask.bundles import Bundle
from manytask.config import TaskEntry
from manytask.data.loading import load_task
from manytask.evaluation.scoring import evaluate_data, summarize
from manytask.io import atomic_write_json, user_cache
from manytask.models.precision import (PRECISIONS, PrecisionError, apply_precision, autocast_precision,  # noqa: F401
                                       cache_kind, check, quantize, quantize_model)

log = logging.getLogger(__name__)
DATA_ERRORS = (FileNotFoundError, ValueError)  # a task's dev data absent or unreadable here: it is unscored


def _eval_data(pkg, glue_dir: Path):
    ev = pkg.info.get("eval")
    entry = TaskEntry.model_validate(ev["entry"]) if ev else TaskEntry(name=pkg.spec.name)
    return load_task(entry, pkg.spec, glue_dir, ev["data_seed"] if ev else 0, with_train=False)


def cache_root(bundle: Bundle) -> Path:
    """Where a bundle's scores are cached: BUNDLE/scores, or, for a bundle this process cannot write (a
    read-only volume), $MANYTASK_CACHE (default ~/.cache/manytask)/scores/<trunk hash>."""
    own = bundle.root / "scores"
    if os.access(own if own.exists() else bundle.root, os.W_OK):
        return own
    return user_cache() / "scores" / bundle.trunk_sha256[:16]


def _cached(bundle: Bundle, root: Path, task_dir: str, precision: str, device_type: str) -> tuple[Path, Optional[dict]]:
    """A task's cached score under a precision on a kind of device (a bf16 score on a GPU is not a CPU's);
    fp32 and bf16 scores cached before devices were told apart were CPU scores."""
    kind = cache_kind(precision, device_type)
    path = root / f"{task_dir}.{precision}.{kind}.json"
    legacy = kind == "cpu" and precision in ("fp32", "bf16", "int8")
    for p in [path, bundle.root / "scores" / f"{task_dir}.{precision}.json"] if legacy else [path]:
        if p.exists():
            return path, json.loads(p.read_text())
    return path, None


def task_score(model, data, tokenizer, max_len: int, precision: str = "fp32", batch_size: int = 64) -> dict:
    """One task's primary dev score with ``model``: {"score", "metric", "n"}."""
    results = evaluate_data(model, data, tokenizer, max_len, batch_size, autocast_precision(precision))
    score = summarize({data.name: results}, {data.name: data.spec})["primary"][data.name]
    return {"score": score, "metric": data.spec.primary, "n": sum(len(ex) for ex in data.evals.values())}


def dev_scores(bundle: Bundle, model, precision: str, glue_dir: Path, batch_size: int = 64,
               device: Optional[torch.device] = None) -> dict[str, dict]:
    """Each task's primary dev score under ``precision`` with ``model`` (the served one, on ``device``), cached
    by task directory, precision and device type; a task whose dev data is not on this machine is reported as
    unscored, with the reason."""
    device = device or next(model.parameters()).device
    tok = bundle.tokenizer()
    max_len = bundle.manifest["trunk"]["max_seq_length"]
    root = cache_root(bundle)
    out = {}
    for name, entry in bundle.manifest["tasks"].items():
        cache, hit = _cached(bundle, root, Path(entry["dir"]).name, precision, device.type)
        if hit is not None:
            out[name] = hit
            continue
        try:
            data = _eval_data(bundle.package(name), glue_dir)
        except DATA_ERRORS as e:
            out[name] = {"unscored": str(e).splitlines()[0][:300]}
            continue
        out[name] = task_score(model, data, tok, max_len, precision, batch_size)
        atomic_write_json(cache, out[name])
    return out


def compare(base: dict, other: dict, tolerance: float) -> list[str]:
    """Tasks whose score under the other precision is more than ``tolerance`` points below fp32."""
    worse = []
    for name, b in base.items():
        o = other.get(name, {})
        if "score" in b and "score" in o and 100 * (b["score"] - o["score"]) > tolerance:
            worse.append(f"{name}: {100 * b['score']:.1f} -> {100 * o['score']:.1f}")
    return worse
