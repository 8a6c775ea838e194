"""One training step: the plan's batch, this process's share of it in micro-batches, every objective of every
task in it, and the mean the whole batch would give in one process.

Every step takes one path: a batch of one task is a mixed batch with one task. Under data parallelism each rank
takes every W-th example of each task's part of the global batch; with gradient accumulation a rank's share is
split again into micro-batches. A micro-batch left without a task's examples runs one of them with weight 0 and
counts nothing, so every rank and micro-batch runs the same tasks (DDP sees the same parameters used).

The counts of the whole step (every micro-batch, every process) are reduced once; each micro-batch's loss is its
sums over those counts, so the micro-batches' gradients add up to the whole batch's mean.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch.profiler import record_function

from manytask import runtime
from manytask.data.features import TaskBatch, collate
from manytask.records import Features
from manytask.training.objectives import TaskObjectives


@dataclass
class StepTask:
    """What a step needs of a task: its training features, objectives and loss weight."""

    train: Features
    objectives: TaskObjectives
    loss_weight: float = 1.0


@dataclass
class MicroBatch:
    inputs: dict[str, torch.Tensor]
    batches: dict[str, TaskBatch]
    absent: set[str]  # tasks this micro-batch only pads (one example, weight 0)


@dataclass
class PreparedStep:
    """A step's micro-batches (on the device) and the counts of every objective's terms, summed over them."""

    step: dict[str, list[int]]
    micro: list[MicroBatch]
    counts: list[float]


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's part of a global batch: every W-th example, starting at the rank."""
    return list(indices[runtime.rank()::runtime.world()])


def _chunks(indices: list[int], k: int) -> list[list[int]]:
    size = -(-len(indices) // k) if indices else 0
    return [indices[i * size:(i + 1) * size] for i in range(k)]


def prepare(tasks: dict[str, StepTask], step: dict[str, list[int]], pad_id: int, device: torch.device,
            accumulation: int = 1) -> PreparedStep:
    """Collate this rank's share of a step into micro-batches, count every term, and move them to the device
    (pinned, without blocking, on a GPU): the part of a step that can run ahead, off the training thread."""
    with record_function("manytask.collate"):  # named for the profile in benchmarks/train_profile.py
        return _prepare(tasks, step, pad_id, device, accumulation)


def _prepare(tasks, step, pad_id, device, accumulation) -> PreparedStep:
    mine = {t: _chunks(shard(full), accumulation) for t, full in step.items()}
    pin = device.type == "cuda"
    micro, counts = [], None
    for m in range(accumulation):
        absent = {t for t in step if not mine[t][m]}
        parts = {t: (tasks[t].train, mine[t][m] or step[t][:1]) for t in step}
        inputs, batches = collate(parts, pad_id)
        these = [0.0 if t in absent else float(c) for t in step for o in tasks[t].objectives
                 for c in o.counts(batches[t])]
        counts = these if counts is None else [a + b for a, b in zip(counts, these)]
        if pin:
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        micro.append(MicroBatch({k: v.to(device, non_blocking=True) for k, v in inputs.items()},
                                {t: b.to(device) for t, b in batches.items()}, absent))
    return PreparedStep(step, micro, counts or [])


def reduce_counts(counts: list[float], device: torch.device) -> torch.Tensor:
    """The step's counts summed over processes in one all-reduce and divided by their number, so that DDP's mean
    of the ranks' gradients is the gradient of the global mean (the counts themselves in one process)."""
    den = torch.tensor(counts, dtype=torch.float32, device=device)
    if runtime.active():
        den = runtime.all_reduce_sum(den) / runtime.world()
    return den


def micro_loss(net, tasks: dict[str, StepTask], prepared: PreparedStep, m: int, den: torch.Tensor,
               device: torch.device, precision: str, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's share of the step's loss, and each objective's share (detached, for the log).

    With several tasks the trunk runs once over the whole micro-batch, each example goes through its own task's
    branch and head, and the loss is the sum over tasks of loss weight * (n_task / n) * (the task's objectives
    added up), each term over the whole step's count (zero, not NaN, where nothing carries it).
    """
    step, mb = prepared.step, prepared.micro[m]
    rows = {t: b.rows for t, b in mb.batches.items() if b.rows is not None} or None
    with runtime.autocast(precision, device.type), record_function("manytask.forward"):
        outputs = net(mb.inputs["input_ids"], mb.inputs["attention_mask"], mb.inputs["token_type_ids"],
                      tasks=list(step), rows=rows, extras=True)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    values: dict[str, dict] = {t: {} for t in step}
    i = 0
    for t in step:
        for objective in tasks[t].objectives:
            sums = objective.sums(outputs[t], mb.batches[t], progress)
            means = [torch.where(den[i + j] > 0, s / safe[i + j], s * 0.0) for j, s in enumerate(sums)]
            values[t][objective.name] = objective.combine(means)
            i += len(sums)
    total = sum(len(full) for full in step.values())
    loss = torch.zeros((), device=device)
    logged = {}
    for t in step:
        own, *extra = list(tasks[t].objectives)
        value = values[t][own.name]
        for objective in extra:
            value = value + objective.weight * values[t][objective.name]
        weight = 0.0 if t in mb.absent else tasks[t].loss_weight
        loss = loss + value * weight * (len(step[t]) / total)
        if t not in mb.absent:
            logged.update({name: v.detach() for name, v in values[t].items()})
    return loss, logged


def step_loss(net, tasks: dict[str, StepTask], step: dict[str, list[int]], pad_id: int, device: torch.device,
              precision: str, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole step's loss in one micro-batch (what ``Trainer.step_loss`` gives tests and tools)."""
    prepared = prepare(tasks, step, pad_id, device)
    return micro_loss(net, tasks, prepared, 0, reduce_counts(prepared.counts, device), device, precision, progress)


class Prefetcher:
    """Prepares the next steps in a background thread while the current one trains (collation is Python;
    the model's work releases the GIL). ``depth`` steps are kept ready; errors surface on the training thread."""

    def __init__(self, make: "callable", indices: Iterator[int], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, indices), daemon=True,
                                        name="manytask-prefetch")
        self._thread.start()

    def _run(self, make, indices) -> None:
        try:
            for i in indices:
                item = (i, make(i), None)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the training thread
            self._queue.put((None, None, e))

    def get(self, index: int) -> PreparedStep:
        i, prepared, error = self._queue.get()
        if error is not None:
            raise error
        if i != index:
            raise RuntimeError(f"prefetched step {i}, expected {index}")
        return prepared

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)


def prefetcher(tasks: dict[str, StepTask], plan_steps: list, start: int, pad_id: int, device: torch.device,
               accumulation: int, depth: int = 2) -> Optional[Prefetcher]:
    return Prefetcher(lambda i: prepare(tasks, plan_steps[i], pad_id, device, accumulation),
                      iter(range(start, len(plan_steps))), depth)
