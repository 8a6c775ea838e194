"""Which tasks and which examples each training step sees.

The whole plan is drawn up front from the seed, so a resumed run continues with exactly the
batches an uninterrupted one would have seen, and the draws per task can be reported.

Two ways to batch: ``per_task`` (each step is one task's batch; the task is drawn with the
sampling strategy) and ``mixed`` (BAM: each example of a batch is drawn on its own, so a batch
holds several tasks in the proportions the strategy gives).
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


def _example_stream(name: str, size: int, seed: int) -> Iterator[int]:
    """A task's example indices, each epoch a fresh seeded permutation (mixed batching)."""
    epoch = 0
    while True:
        yield from np.random.default_rng([seed, zlib.crc32(name.encode()), epoch, 1]).permutation(size).tolist()
        epoch += 1


def batches_per_epoch(sizes: dict[str, int], batch_size: int, batching: str = "per_task") -> int:
    """Steps in one pass over every training set: per task, or over their union (mixed)."""
    if batching == "mixed":
        return math.ceil(sum(sizes.values()) / batch_size)
    return sum(math.ceil(n / batch_size) for n in sizes.values())


Step = dict[str, list[int]]  # task -> indices of its training examples in this step's batch


@dataclass
class Plan:
    steps: list[Step]

    def draws(self, upto: int | None = None) -> dict[str, dict[str, int]]:
        """Batches (that hold the task) and examples actually drawn per task, not just the intended ratio."""
        batches: Counter = Counter()
        examples: Counter = Counter()
        for step in self.steps[:upto]:
            for task, idx in step.items():
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
    batching: str = "per_task",
) -> Plan:
    """Draw every step's tasks and examples from the seed."""
    if batching == "mixed":
        return _mixed_plan(lengths, batch_size, total_steps, cfg, seed, group_by_length)
    if batching != "per_task":
        raise ValueError(f"unknown batching {batching!r} (per_task, mixed)")
    names = sorted(lengths)
    streams = {t: _task_stream(t, lengths[t], batch_size, seed, group_by_length) for t in names}
    rng = np.random.default_rng([seed, 7])
    steps: list[tuple[str, list[int]]] = []
    if cfg.strategy == "each_once":
        while len(steps) < total_steps:
            epoch = [(t, next(streams[t])) for t in names for _ in range(math.ceil(len(lengths[t]) / batch_size))]
            steps.extend(epoch[i] for i in rng.permutation(len(epoch)))
        return Plan([{t: idx} for t, idx in steps[:total_steps]])
    probs = task_probabilities({t: len(lengths[t]) for t in names}, cfg)
    picks = rng.choice(len(names), size=total_steps, p=[probs[t] for t in names])
    return Plan([{names[i]: next(streams[names[i]])} for i in picks])


def _mixed_plan(lengths: dict[str, Sequence[int]], batch_size: int, total_steps: int, cfg: SamplingConfig,
                seed: int, group_by_length: bool) -> Plan:
    """Batches that mix tasks: every example slot draws its task (or, each_once, every example of an
    epoch is shuffled with all the others); with grouping, similar lengths share a batch."""
    names = sorted(lengths)
    rng = np.random.default_rng([seed, 11])
    segments: list[list[list[tuple[str, int]]]] = []  # batches, in segments that grouping must not cross
    if cfg.strategy == "each_once":
        done = 0
        while done < total_steps:
            epoch = [(t, i) for t in names for i in range(len(lengths[t]))]
            shuffled = [epoch[i] for i in rng.permutation(len(epoch))]
            batches = [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]  # last may be short
            segments.append(batches[:total_steps - done])
            done += len(segments[-1])
    else:
        probs = task_probabilities({t: len(lengths[t]) for t in names}, cfg)
        streams = {t: _example_stream(t, len(lengths[t]), seed) for t in names}
        picks = rng.choice(len(names), size=total_steps * batch_size, p=[probs[t] for t in names])
        pairs = [(names[i], next(streams[names[i]])) for i in picks]
        segments.append([pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)])
    batches = []
    for segment in segments:
        batches.extend(_group_by_length(segment, lengths, rng) if group_by_length else segment)
    steps = []
    for b in batches:
        step: Step = {}
        for t, i in sorted(b, key=lambda p: p[0]):
            step.setdefault(t, []).append(int(i))
        steps.append(step)
    return Plan(steps)


def _group_by_length(batches: list[list[tuple[str, int]]], lengths: dict[str, Sequence[int]],
                     rng: np.random.Generator) -> list[list[tuple[str, int]]]:
    """Within windows of GROUP_FACTOR batches, refill the batches (same sizes) longest first, then shuffle them."""
    out = []
    for w in range(0, len(batches), GROUP_FACTOR):
        window = batches[w:w + GROUP_FACTOR]
        flat = sorted((p for b in window for p in b), key=lambda p: -lengths[p[0]][p[1]])
        chunks, start = [], 0
        for b in window:
            chunks.append(flat[start:start + len(b)])
            start += len(b)
        out.extend(chunks[i] for i in rng.permutation(len(chunks)))
    return out
