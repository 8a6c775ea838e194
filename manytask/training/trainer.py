"""One training loop for single- and multi-task runs, with periodic evaluation and resumable checkpoints.

The loop draws the whole plan from the seed, runs each step through ``step.step_loss`` (one path for every
kind of batch), and leaves evaluation to ``evaluation.scoring`` and what a task learns to its objectives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.profiler import record_function
from tqdm import tqdm

from manytask import runtime
from manytask.config import SMALL_SLICE, ConfigError, TrainConfig
from manytask.data.samplers import Plan, batches_per_epoch, make_plan
from manytask.evaluation.scoring import evaluate_features, summarize
from manytask.models.checkpoints import CheckpointDir
from manytask.models.multitask import MultiTaskModel, compile_layers
from manytask.models.weights import load_weights
from manytask.records import Features
from manytask.runtime import seed_everything
from manytask.tasks import TaskSpec
from manytask.training.objectives import TaskObjectives
from manytask.training.optim import make_optimizer
from manytask.training.step import StepTask, micro_loss, prefetcher, prepare, reduce_counts, step_loss
from manytask.training.tracking import trackers

log = logging.getLogger(__name__)


@dataclass
class TaskFeatures:
    """A task's tokenised data and what it is trained on, as the trainer sees it."""

    spec: TaskSpec
    train: Features
    evals: dict[str, Features]
    eval_titles: dict[str, str]
    objectives: TaskObjectives
    loss_weight: float = 1.0
    slice_min: int = SMALL_SLICE  # slices smaller than this are flagged in evaluation

    def step_task(self) -> StepTask:
        return StepTask(self.train, self.objectives, self.loss_weight)


Callback = Callable[[str, dict], None]  # (event, payload): "plan", "log", "eval", "early_stop", "end"


def _numerics(cfg: TrainConfig, device: torch.device) -> None:
    """TF32 matmuls on GPUs that have them (fp32 runs otherwise leave the tensor cores idle), and torch's
    deterministic algorithms when asked (GPU kernels are otherwise free to reorder sums)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def resume_point(ckpt: CheckpointDir) -> Optional[dict]:
    """Where to resume: rank 0's last checkpoint, told to every rank; every rank must see its files (on
    several machines, a shared run directory), or every rank fails naming those that cannot."""
    info = runtime.broadcast(ckpt.last() if runtime.is_main() else None)
    if info is None:
        return None
    seen = runtime.gather(all((ckpt.root / info[k]).exists() for k in ("weights", "state")))
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(f"{ckpt.root}: rank(s) {blind} cannot see checkpoint step {info['step']} "
                          f"({info['weights']}, {info['state']}); resume with a run directory every machine shares")
    return info


@dataclass
class Trainer:
    model: MultiTaskModel
    tasks: list[TaskFeatures]
    cfg: TrainConfig
    run_dir: Path
    seed: int
    pad_id: int
    callbacks: list[Callback] = field(default_factory=list)

    def __post_init__(self):
        self.device = runtime.resolve_device(self.cfg.device)
        self.precision = runtime.resolve_precision(self.cfg.precision, self.device)
        runtime.init(self.device)
        _numerics(self.cfg, self.device)
        self.by_name = {t.spec.name: t for t in self.tasks}
        self.step_tasks = {n: t.step_task() for n, t in self.by_name.items()}
        self.ckpt = CheckpointDir(Path(self.run_dir) / "checkpoints")
        self.metrics_path = Path(self.run_dir) / "metrics.jsonl"
        sizes = {t.spec.name: len(t.train) for t in self.tasks}
        empty = [n for n, s in sizes.items() if s == 0]
        if empty:
            raise ConfigError(f"no training examples for task(s): {', '.join(empty)}")
        per_epoch = batches_per_epoch(sizes, self.cfg.batch_size, self.cfg.batching)
        self.total_steps = self.cfg.steps or max(1, math.ceil(self.cfg.epochs * per_epoch))
        self.plan: Plan = make_plan(
            {n: t.train.lengths for n, t in self.by_name.items()}, self.cfg.batch_size, self.total_steps,
            self.cfg.sampling, self.seed, self.cfg.group_by_length, self.cfg.batching,
        )
        self.model.to(self.device)
        if self.cfg.compile:
            compile_layers(self.model)
        self.net = self._parallel()
        self.optimizer, self.scheduler = make_optimizer(
            self.model, self.cfg.lr, self.cfg.layerwise_lr_decay, self.cfg.weight_decay,
            int(self.cfg.warmup * self.total_steps), self.total_steps,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.eval_every = self.cfg.eval_every
        if self.cfg.evals:
            self.eval_every = max(1, math.ceil(self.total_steps / self.cfg.evals))
        self.best: dict[str, dict] = {}
        self.step = 0
        self.train_seconds = 0.0
        self.train_examples = 0
        self.best_average = -math.inf  # early stopping: the best dev average so far, and evaluations since
        self.stale_evals = 0
        self.stopped_early = False
        if runtime.is_main():
            self.callbacks = [*self.callbacks, *trackers(self.cfg.report_to, Path(self.run_dir))]

    def _parallel(self):
        """The model as the training step calls it: itself in one process; wrapped in DDP under torchrun.

        Tasks not in a step leave their heads and branches without gradients, so DDP looks for unused
        parameters at every step (``find_unused_parameters``): slower than a static graph, but a step may
        train any subset of the tasks without hanging the other ranks."""
        if runtime.world() == 1:
            return self.model
        runtime.check_same("training plan", [sorted(step.items()) for step in self.plan.steps])
        torch.manual_seed(self.seed * 1000 + runtime.rank())  # dropout differs between ranks
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    # ---- bookkeeping -------------------------------------------------------------------
    def _emit(self, event: str, payload: dict) -> None:
        record = {"event": event, "step": self.step, **payload}
        if runtime.is_main():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        for cb in self.callbacks:
            cb(event, record)

    def _rng(self) -> dict:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def _state(self) -> dict:
        """Training state to resume from; every rank's RNG state (gathered: call on every rank)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": runtime.gather(self._rng()),
            "best": self.best,
            "train_seconds": self.train_seconds,
            "train_examples": self.train_examples,
            "total_steps": self.total_steps,
            "early_stopping": {"best_average": self.best_average, "stale_evals": self.stale_evals,
                               "stopped": self.stopped_early},
        }

    def _restore_rng(self, state: dict) -> None:
        if "rng" not in state:  # a checkpoint from before per-rank states
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(state["numpy_rng"])
            random.setstate(state["python_rng"])
            return
        states, world = state["rng"], runtime.world()
        if len(states) != world:
            log.warning("%s: checkpoint written by %d process(es), resumed by %d: the plan and weights carry on "
                        "exactly, the random streams (dropout) are re-seeded", self.run_dir, len(states), world)
            seed_everything(self.seed * 1000 + runtime.rank() + self.step)
            return
        own = states[runtime.rank()]
        torch.set_rng_state(own["torch"])
        np.random.set_state(own["numpy"])
        random.setstate(own["python"])
        if own.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)

    def _save_last(self) -> None:
        state = self._state()  # every rank takes part in gathering the RNG states
        if runtime.is_main():
            self.ckpt.save_last(self.step, self.model, state)
        runtime.barrier()

    def resume(self) -> bool:
        """Continue from the last checkpoint, if any; the plan is redrawn from the seed. Rank 0 decides whether
        and where to resume; a rank that cannot see that checkpoint fails with the others (no rank waits alone)."""
        if resume_point(self.ckpt) is None:
            return False
        step, weights, state = self.ckpt.load_state()
        if state["total_steps"] != self.total_steps:
            raise ConfigError(f"{self.run_dir}: checkpoint was made for {state['total_steps']} steps, "
                             f"this config gives {self.total_steps}: resume with the run's own config")
        load_weights(weights, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty from a run without fp16 (then a fp16 resume starts a fresh scale)
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state)
        self.best = state["best"]
        if runtime.is_main():
            self.ckpt.restore_best(self.best)
        runtime.barrier()
        self.step = step
        self.train_seconds = state["train_seconds"]
        self.train_examples = state["train_examples"]
        stopping = state.get("early_stopping", {})
        self.best_average = stopping.get("best_average", -math.inf)
        self.stale_evals = stopping.get("stale_evals", 0)
        self.stopped_early = stopping.get("stopped", False)
        log.info("resumed %s at step %d of %d", self.run_dir, step, self.total_steps)
        return True

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Dev metrics per task and split, the primary score per task, and the GLUE-style average. Under data
        parallelism every rank scores its share and the logits are gathered: all ranks get the same metrics."""
        results = {
            name: evaluate_features(self.model, t.spec, t.evals, t.eval_titles, self.cfg.eval_batch_size, self.pad_id,
                                    self.precision, t.slice_min, sharded=True)
            for name, t in self.by_name.items()
        }
        return summarize(results, {n: t.spec for n, t in self.by_name.items()})

    def _track_best(self, results: dict) -> list[str]:
        improved = []
        for name, value in results["primary"].items():
            if name not in self.best or value > self.best[name]["score"]:
                self.best[name] = {"score": value, "step": self.step, "weights": self.ckpt.weights_path(self.step).name}
                improved.append(name)
        return improved

    # ---- the loop ---------------------------------------------------------------------------
    def step_loss(self, step: dict[str, list[int]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one step of the plan in one micro-batch, and each objective's value (``training.step``)."""
        return step_loss(self.net, self.step_tasks, step, self.pad_id, self.device, self.precision,
                         self.step / self.total_steps)

    def _log_state(self, progress: float) -> dict:
        state: dict = {}
        for t in self.by_name.values():
            for objective in t.objectives:
                state.update(objective.log_state(progress))
        return state

    def _optimizer_step(self, prepared) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward over the step's micro-batches (DDP syncs gradients on the last only), then one
        optimizer step; the learning rate moves on only when the fp16 scaler did not skip the step."""
        den = reduce_counts(prepared.counts, self.device)
        progress = self.step / self.total_steps
        loss, logged, k = torch.zeros((), device=self.device), {}, len(prepared.micro)
        for m in range(k):
            sync = m == k - 1 or not hasattr(self.net, "no_sync")
            with (contextlib.nullcontext() if sync else self.net.no_sync()):
                part, values = micro_loss(self.net, self.step_tasks, prepared, m, den, self.device, self.precision,
                                          progress)
                with record_function("manytask.backward"):
                    self.scaler.scale(part).backward()
            loss = loss + part.detach()
            for name, v in values.items():
                logged[name] = logged[name] + v if name in logged else v
        with record_function("manytask.optimizer"):
            if self.cfg.max_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if scale is None or self.scaler.get_scale() >= scale:  # a lowered scale: the step was skipped
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, logged

    def _check_finite(self, nonfinite: torch.Tensor, since: int) -> None:
        """Losses are checked for NaN/inf when they are looked at anyway (logging, evaluation, checkpoints), not
        at every step (a host sync each time on a GPU); no checkpoint is written past a non-finite loss."""
        if bool(nonfinite):
            raise FloatingPointError(f"steps {since}-{self.step}: a loss was not finite (NaN or inf)")

    def _evaluate_and_stop(self) -> tuple[dict, bool]:
        """Evaluate (every rank its share), keep each task's best checkpoint, and say whether early stopping
        ends the run: ``patience`` evaluations without a gain of ``min_delta`` points in the dev average."""
        results = self.evaluate()
        improved = self._track_best(results)
        if runtime.is_main():
            self._emit("eval", results)
            if improved:
                self.ckpt.save_best(self.best, self.step, self.model)
        average = results["average"]
        if average == average and 100 * (average - self.best_average) > self.cfg.min_delta:
            self.best_average, self.stale_evals = average, 0
        else:
            self.stale_evals += 1
        return results, self.cfg.patience is not None and self.stale_evals >= self.cfg.patience

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps or self.stopped_early

    def train(self, stop_at: Optional[int] = None) -> dict:
        """Train to the end, or (``stop_at``) until that step, leaving a checkpoint there to resume from."""
        if self.step == 0:
            self._emit("plan", {"total_steps": self.total_steps, "draws": self.plan.draws(),
                                "sampling": self.cfg.sampling.model_dump(),
                                "batching": self.cfg.batching})
        self.model.train()
        running: dict[str, list[torch.Tensor]] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.cfg.progress or not runtime.is_main(),
                   desc="train", dynamic_ncols=True)
        last_eval: Optional[dict] = None
        k = self.cfg.gradient_accumulation_steps
        ahead = prefetcher(self.step_tasks, self.plan.steps, self.step, self.pad_id, self.device, k,
                           self.cfg.prefetch) if self.cfg.prefetch else None
        nonfinite, checked = torch.zeros((), dtype=torch.bool, device=self.device), self.step
        try:
            while self.step < self.total_steps:
                step = self.plan.steps[self.step]
                start = time.perf_counter()
                prepared = ahead.get(self.step) if ahead else prepare(self.step_tasks, step, self.pad_id, self.device, k)
                loss, per_objective = self._optimizer_step(prepared)
                nonfinite = nonfinite | ~torch.isfinite(loss)
                self.train_seconds += time.perf_counter() - start
                self.train_examples += sum(len(idx) for idx in step.values())
                self.step += 1
                bar.update(1)
                for name, value in per_objective.items():
                    running.setdefault(name, []).append(value)
                at_end = self.step == self.total_steps
                due_eval = (self.eval_every and self.step % self.eval_every == 0) or at_end
                due_save = (self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0) or self.step == stop_at
                if self.step % self.cfg.log_every == 0 or at_end or due_eval or due_save:
                    self._check_finite(nonfinite, checked)
                    checked = self.step
                if self.step % self.cfg.log_every == 0 or at_end:
                    losses = {k_: float(np.mean(torch.stack(v).tolist())) for k_, v in running.items()}  # one sync a log
                    bar.set_postfix(loss=f"{np.mean([l for v in running.values() for l in torch.stack(v).tolist()]):.4f}")
                    self._emit("log", {"loss": losses, "lr": self.scheduler.get_last_lr()[-1],
                                       "examples_per_s": self.train_examples / max(self.train_seconds, 1e-9),
                                       **self._log_state((self.step - 1) / self.total_steps)})
                    running = {}
                if due_eval:
                    last_eval, stopped_early = self._evaluate_and_stop()
                    self.stopped_early = stopped_early and not at_end
                    self._save_last()
                    self.model.train()
                    if self.stopped_early:
                        self._emit("early_stop", {"best_average": self.best_average, "patience": self.cfg.patience})
                        break
                elif due_save:
                    self._save_last()
                if self.step == stop_at and not at_end:
                    bar.close()
                    return {"stopped": self.step, "total_steps": self.total_steps}
        finally:
            if ahead:
                ahead.close()
        bar.close()
        summary = {
            "total_steps": self.total_steps,
            "steps_run": self.step,
            "early_stopped": self.stopped_early,
            "draws": self.plan.draws(),
            "best": self.best,
            "final": last_eval,
            "train_seconds": self.train_seconds,
            "train_examples": self.train_examples,
            "examples_per_s": self.train_examples / max(self.train_seconds, 1e-9),
        }
        self._emit("end", {k: v for k, v in summary.items() if k != "final"})
        return summary
