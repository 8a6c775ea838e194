"""What the server calls: answer a batch of texts for some tasks (``inference.answer_batch``) with the current
model version, as JSON.

``MergedPredictor`` serves a bundle: the trunk runs once per batch, then only the branches asked for. Tasks are
changed by building a new snapshot (sharing every module) and swapping one reference, so a batch sees either
the old or the new task set, never a mix. ``SeparatePredictor`` serves one full model per task, the baseline
the merged bundle is measured against.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import torch

from manytask.bundles import Bundle, TaskPackage
from manytask.inference import answer_batch
from manytask.models.multitask import MultiTaskModel, compile_layers
from manytask.models.precision import PrecisionError, apply_precision, autocast_precision, check, quantize
from manytask.models.rundir import RunDir
from manytask.runtime import resolve_device
from manytask.tasks import TaskSpec


class Predictor:
    tokenizer = None
    max_length: int = 128
    device = torch.device("cpu")
    precision: str = "fp32"  # autocast precision (int8 is applied to the weights at load instead)
    weights: str = "fp32"  # what the server reports: fp32, bf16, int8, int8-channel or auto
    plan: Optional[dict] = None  # auto: the precision plan (its int8 units, per task what it runs in int8)

    def snapshot(self):
        """The current model version; a request is validated against it and run with it."""
        return None

    def specs(self, snapshot=None) -> dict[str, TaskSpec]:
        raise NotImplementedError

    def layers_run(self, tasks: list[str]) -> int:
        raise NotImplementedError

    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]], tasks: list[str], snapshot=None,
                rows: Optional[dict[str, list[int]]] = None) -> list[dict]:
        """Per input, the JSON answers of the tasks it asked for (``rows``: task -> the inputs that asked it)."""
        raise NotImplementedError


def _json(answers) -> list[dict]:
    return [{t: p.to_json() for t, p in a.items()} for a in answers]


class MergedPredictor(Predictor):
    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", plan: Optional[dict] = None,
                 compile: bool = False):
        """``plan``: with precision auto, the precision plan (``serving.plan``) whose units are made int8.
        ``compile``: torch.compile every layer (fp32, bf16 or fp16 weights; int8 layers are left as they are)."""
        self.bundle = bundle
        self.tokenizer = bundle.tokenizer()
        self.max_length = bundle.manifest["trunk"]["max_seq_length"]
        self.device = resolve_device(device)
        check(precision, self.device)
        if precision == "auto" and plan is None:
            raise ValueError("precision auto serves a precision plan: pass one (serving.plan.plan_for)")
        self.weights, self.precision, self.plan = precision, autocast_precision(precision), plan
        self.model: MultiTaskModel = bundle.merged_model().to(self.device)
        apply_precision(self.model, precision, (plan or {}).get("int8"))
        if compile:
            if precision in ("int8", "int8-channel", "auto"):
                raise PrecisionError(f"--compile runs fp32, bf16 or fp16 layers, not {precision}")
            compile_layers(self.model)
        self.served = self._served_dirs()
        self.bundle_trunk = bundle.manifest["trunk"]["sha256"]
        self._write = threading.Lock()

    def snapshot(self) -> MultiTaskModel:
        return self.model

    def specs(self, snapshot: Optional[MultiTaskModel] = None) -> dict[str, TaskSpec]:
        return dict((snapshot or self.model).specs)

    def predict(self, texts, pairs, tasks, snapshot=None, rows=None) -> list[dict]:
        model = snapshot or self.model  # one reference read: the whole batch uses one snapshot
        return _json(answer_batch(model, model.specs, self.tokenizer, self.max_length, self.device, self.precision,
                                  texts, pairs, tasks, rows))

    def layers_run(self, tasks: list[str]) -> int:
        return self.model.layers_run(tasks)

    def _attach(self, model: MultiTaskModel, name: str) -> None:
        """Read a task back from the bundle into ``model`` in the served precision. Under a plan, a task that
        changed since the plan was made keeps its branch fp32 (the plan never scored it)."""
        self.bundle.package(name).attach(model)  # read back what was written
        if name in model.branches and self.weights in ("int8", "int8-channel"):
            quantize(model.branches[name], per_channel=self.weights == "int8-channel")
        if self.plan is not None:
            self.plan = {**self.plan, "tasks": {**self.plan["tasks"], name: {
                "int8_layers": sum(1 for u in self.plan["int8"] if u.startswith("trunk.")
                                   and int(u.split(".")[1]) < model.split_depth[name]),
                "layers_run": model.layers_run([name]),
                "note": "changed after the precision plan was made: its branch is served in fp32"}}}

    def put(self, pkg: TaskPackage) -> dict:
        """Write the task into the bundle, then swap in a snapshot that has it."""
        with self._write:
            entry = self.bundle.put(pkg, model=self.model)  # checked on the served trunk before it is written
            fresh = self.model.share([n for n in self.model.task_names if n != pkg.spec.name])
            self._attach(fresh, pkg.spec.name)
            self.model = fresh.to(self.device).eval()
            self.served = {**self.served, pkg.spec.name: entry["dir"]}
            return entry

    def remove(self, name: str) -> None:
        with self._write:
            self.bundle.remove(name)
            self.model = self.model.share([n for n in self.model.task_names if n != name]).eval()
            self.served = {n: d for n, d in self.served.items() if n != name}

    def _served_dirs(self) -> dict[str, str]:
        return {n: e["dir"] for n, e in self.bundle.manifest["tasks"].items()}

    def refresh(self) -> list[str]:
        """Follow changes another process made to the bundle (``manytask bundle ...``, another replica): swap
        in a snapshot with the changed tasks re-read, the removed ones dropped. Returns what changed."""
        with self._write:
            manifest = self.bundle.manifest
            if manifest["trunk"]["sha256"] != self.bundle_trunk:
                raise RuntimeError(f"{self.bundle.root}: the bundle's trunk changed; restart the server")
            now = {n: e["dir"] for n, e in manifest["tasks"].items()}
            changed = sorted(n for n in now if self.served.get(n) != now[n])
            removed = sorted(set(self.served) - set(now))
            if not changed and not removed:
                return []
            fresh = self.model.share([n for n in self.model.task_names if n in now and n not in changed])
            for name in changed:
                self._attach(fresh, name)
            self.model = fresh.to(self.device).eval()
            self.served = now
            return changed + [f"-{n}" for n in removed]


class SeparatePredictor(Predictor):
    """One full single-task model per task (e.g. full fine-tuning runs): every task runs all L layers."""

    def __init__(self, runs: dict[str, Path], device: str = "cpu", precision: str = "fp32"):
        self.device = resolve_device(device)
        check(precision, self.device)
        if precision == "auto":
            raise PrecisionError("precision auto plans a bundle's layers; separate models serve fp32, bf16, int8 or "
                                 "int8-channel")
        self.weights, self.precision = precision, autocast_precision(precision)
        self.models: dict[str, MultiTaskModel] = {}
        for task, run_dir in runs.items():
            run = RunDir.open(run_dir)
            run.spec(task)  # the run must have the task
            self.models[task] = run.model_for(task).to(self.device).eval()
            apply_precision(self.models[task], precision)  # each task its own quantised model, as a user would
            self.tokenizer = run.tokenizer()
            self.max_length = run.cfg.model.max_seq_length

    def specs(self, snapshot=None) -> dict[str, TaskSpec]:
        return {t: m.specs[t] for t, m in self.models.items()}

    def predict(self, texts, pairs, tasks, snapshot=None, rows=None) -> list[dict]:
        """Each task's own model runs on the rows that asked for it."""
        rows = rows if rows is not None else {t: list(range(len(texts))) for t in tasks}
        answers: list[dict] = [{} for _ in texts]
        for t in tasks:
            sub = [texts[i] for i in rows[t]]
            own = answer_batch(self.models[t], self.models[t].specs, self.tokenizer, self.max_length, self.device,
                               self.precision, sub, [pairs[i] for i in rows[t]] if pairs is not None else None, [t])
            for i, a in zip(rows[t], own):
                answers[i][t] = a[t].to_json()
        return answers

    def layers_run(self, tasks: list[str]) -> int:
        return sum(self.models[t].layers_run([t]) for t in tasks)
