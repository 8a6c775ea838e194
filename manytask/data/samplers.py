"""Which task and which examples each training step sees.

The whole plan is drawn up front from the seed, so a resumed run continues with exactly the
batches an uninterrupted one would have seen, and the draws per task can be reported.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from manytask.config import SamplingConfig

GROUP_FACTOR = 50  # length grouping sorts within windows of 50 batches, as HF's LengthGroupedSampler


def task_probabilities(sizes: dict[str, int], cfg: SamplingConfig) -> dict[str, float]:
    """p(task) ~ |D|^alpha (proportional), |D|^(1/T) (temperature), or equal (uniform)."""
    if cfg.strategy == "proportional":
        power = cfg.alpha
    elif cfg.strategy == "temperature":
        if cfg.temperature <= 0:
            raise ValueError("sampling temperature must be positive")
        power = 1.0 / cfg.temperature
    elif cfg.strategy == "uniform":
        power = 0.0
    else:
        raise ValueError(f"{cfg.strategy!r} has no task probabilities: every example is seen once per epoch")
    weights = {t: float(n) ** power for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def epoch_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator, group_by_length: bool) -> list[list[int]]:
    """One pass over a task's examples in batches; with grouping, similar lengths share a batch."""
    order = rng.permutation(len(lengths))
    if group_by_length:
        window = batch_size * GROUP_FACTOR
        chunks = [order[i : i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort([-lengths[j] for j in c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _task_stream(name: str, lengths: Sequence[int], batch_size: int, seed: int, group: bool) -> Iterator[list[int]]:
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), epoch])
        yield from epoch_batches(lengths, batch_size, rng, group)
        epoch += 1


def batches_per_epoch(sizes: dict[str, int], batch_size: int) -> int:
    return sum(math.ceil(n / batch_size) for n in sizes.values())


@dataclass
class Plan:
    steps: list[tuple[str, list[int]]]  # (task, example indices) per step

    def draws(self, upto: int | None = None) -> dict[str, dict[str, int]]:
        """Batches and examples actually drawn per task (reported, not just the intended ratio)."""
        batches: Counter = Counter()
        examples: Counter = Counter()
        for task, idx in self.steps[:upto]:
            batches[task] += 1
            examples[task] += len(idx)
        return {t: {"batches": batches[t], "examples": examples[t]} for t in sorted(batches)}


def make_plan(
    lengths: dict[str, Sequence[int]],
    batch_size: int,
    total_steps: int,
    cfg: SamplingConfig,
    seed: int,
    group_by_length: bool = True,
) -> Plan:
    """Draw every step's task and batch from the seed."""
    names = sorted(lengths)
    streams = {t: _task_stream(t, lengths[t], batch_size, seed, group_by_length) for t in names}
    rng = np.random.default_rng([seed, 7])
    steps: list[tuple[str, list[int]]] = []
    if cfg.strategy == "each_once":
        while len(steps) < total_steps:
            epoch = [(t, next(streams[t])) for t in names for _ in range(math.ceil(len(lengths[t]) / batch_size))]
            steps.extend(epoch[i] for i in rng.permutation(len(epoch)))
        return Plan(steps[:total_steps])
    probs = task_probabilities({t: len(lengths[t]) for t in names}, cfg)
    picks = rng.choice(len(names), size=total_steps, p=[probs[t] for t in names])
    return Plan([(names[i], next(streams[names[i]])) for i in picks])
