"""A task package: one task's own files (branch layers, head, spec, how it was made), cut out of a trained run,
checked against a trunk before it is written, and attached to a model that has that trunk.

    <dir>/task.safetensors   branch.<i>.* and head.*
    <dir>/task.json          format, spec, split depth, layers, pooling, head type, trunk hash, info
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from manytask.errors import ManytaskError
from manytask.io import load_tensors, save_tensors, tensors_hash
from manytask.kinds import kind_of
from manytask.models.heads import SBLHead
from manytask.models.multitask import MultiTaskModel
from manytask.models.rundir import RunDir
from manytask.tasks import TaskSpec

TASK_FORMAT = "manytask-task/1"


class BundleError(ManytaskError, ValueError):
    """A bundle or task package that cannot be used; the message names the task and the file."""


TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # also a directory name and a URL segment


def check_task_name(name: str) -> None:
    if not TASK_NAME.match(name):
        raise BundleError(f"task name {name!r} is not valid: 1-64 letters, digits, '_' or '-', starting with a "
                          "letter or digit")


def trunk_tensors(state: dict[str, torch.Tensor], pooling: str = "pooler") -> dict[str, torch.Tensor]:
    """The trunk's tensors (the encoder's); its pooler only where the tasks pool with it."""
    return {k: v for k, v in state.items() if k.startswith("encoder.")
            and (pooling == "pooler" or not k.startswith("encoder.pooler."))}


# ---- task packages ------------------------------------------------------------------------------------
@dataclass
class TaskPackage:
    """One task's own files: what a bundle adds, updates, or serves."""

    spec: TaskSpec
    split_depth: int
    layers: int
    pooling: str
    trunk_sha256: str
    tensors: dict[str, torch.Tensor]  # branch.<i>.* and head.*
    info: dict  # dev metrics, source run, how it was made
    head: str = "linear"  # the head's type, recorded (not guessed from the weights' names)

    @classmethod
    def from_model(cls, model: MultiTaskModel, task: str, info: Optional[dict] = None) -> "TaskPackage":
        state = model.state_dict()
        tensors = {}
        for k, v in state.items():
            for prefix, new in ((f"branches.{task}.", "branch."), (f"heads.{task}.", "head.")):
                if k.startswith(prefix):
                    tensors[new + k[len(prefix):]] = v.detach().cpu().clone().contiguous()
        return cls(model.specs[task], model.split_depth[task], model.branch_size(task), model.pooling,
                   tensors_hash(trunk_tensors(state, model.pooling)), tensors, info or {}, model.head_type(task))

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / "task.safetensors", self.tensors)
        meta = {"format": TASK_FORMAT, "spec": self.spec.model_dump(mode="json", exclude_none=True),
                "split_depth": self.split_depth, "layers": self.layers, "pooling": self.pooling, "head": self.head,
                "trunk_sha256": self.trunk_sha256, "info": self.info}
        (directory / "task.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: Path) -> "TaskPackage":
        directory = Path(directory)
        meta_path = directory / "task.json"
        if not meta_path.is_file() or not (directory / "task.safetensors").is_file():
            raise BundleError(f"{directory}: not a task package (needs task.json and task.safetensors)")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != TASK_FORMAT:
                raise BundleError(f"{meta_path}: not a {TASK_FORMAT} file")
            spec = TaskSpec.model_validate(meta["spec"])
            fields = (int(meta["split_depth"]), int(meta["layers"]), str(meta["pooling"]), str(meta["trunk_sha256"]))
        except (ValueError, KeyError, TypeError) as e:  # JSON, pydantic and conversion errors are ValueErrors
            if isinstance(e, BundleError):
                raise
            raise BundleError(f"{meta_path}: damaged or incomplete task file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
        try:
            tensors = load_tensors(directory / "task.safetensors")
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise BundleError(f"{directory / 'task.safetensors'}: not readable as safetensors ({e})") from None
        # packages written before the head type was recorded: a slice-based-learning head has indicator weights
        head = str(meta.get("head") or ("sbl" if "head.indicator.weight" in tensors else kind_of(spec).head_name))
        return cls(spec, *fields, tensors, meta.get("info", {}) if isinstance(meta.get("info"), dict) else {}, head)

    def check(self, trunk: MultiTaskModel) -> None:
        """Refuse a package that would break serving, before anything is written: a bad name, a head whose
        size differs from the label count, non-finite weights, or a probe forward pass that fails or gives
        non-finite or mis-shaped outputs on the bundle's trunk."""
        name = self.spec.name
        check_task_name(name)
        head = self.tensors.get("head.out.weight")
        if head is None or head.dim() != 2:
            raise BundleError(f"task {name!r}: the package has no head weights (head.out.weight)")
        if head.shape[0] != self.spec.num_outputs:
            raise BundleError(f"task {name!r}: the head has {head.shape[0]} outputs, the task declares "
                              f"{self.spec.num_outputs} ({self.spec.labels or 'one score'})")
        bad = sorted(k for k, v in self.tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if bad:
            raise BundleError(f"task {name!r}: non-finite weights (NaN or Inf) in {', '.join(bad[:3])}")
        if self.split_depth < 0 or self.layers < 0 or self.split_depth + self.layers > trunk.num_layers:
            raise BundleError(f"task {name!r}: a branch of {self.layers} layer(s) from split depth {self.split_depth} "
                              f"does not fit the {trunk.num_layers}-layer trunk")
        probe = trunk.share([])
        try:
            self.attach(probe)
            device = next(trunk.parameters()).device
            vocab = trunk.config.vocab_size
            ids = torch.tensor([[min(101, vocab - 1), 1 % vocab, 2 % vocab, min(102, vocab - 1)]], device=device)
            with torch.inference_mode():
                out = probe.to(device).eval()(ids, torch.ones_like(ids), torch.zeros_like(ids), tasks=[name])[name].logits
        except BundleError:
            raise
        except Exception as e:
            raise BundleError(f"task {name!r}: a probe forward pass failed ({type(e).__name__}: {e})") from None
        want = kind_of(self.spec).probe_shape(self.spec, 1, ids.shape[1])
        if tuple(out.shape) != want or not torch.isfinite(out).all():
            raise BundleError(f"task {name!r}: the probe forward pass gave {tuple(out.shape)} "
                              f"{'non-finite ' if not torch.isfinite(out).all() else ''}outputs, expected {want}")

    def attach(self, model: MultiTaskModel) -> None:
        """Add this task (branch and head) to a model that has the same trunk."""
        if self.pooling != model.pooling:
            raise BundleError(f"task {self.spec.name!r} pools with {self.pooling!r}, the bundle with {model.pooling!r}")
        model.specs[self.spec.name] = self.spec
        model.add_branch(self.spec.name, self.layers, self.split_depth, fresh=True)
        if self.head == "sbl":  # slice-based learning: its slices are in the indicator weights' shape
            slices = self.tensors["head.indicator.weight"].shape[0]
            model.heads[self.spec.name] = SBLHead(model.hidden_size, self.spec.num_outputs, 0.0, slices, self.spec.kind)
        else:
            model.heads[self.spec.name] = kind_of(self.spec).make_head(model.hidden_size, self.spec.num_outputs, 0.0)
        own = {f"branches.{self.spec.name}.{k[len('branch.'):]}": v for k, v in self.tensors.items() if k.startswith("branch.")}
        own.update({f"heads.{self.spec.name}.{k[len('head.'):]}": v for k, v in self.tensors.items() if k.startswith("head.")})
        expected = {k for k in model.state_dict() if k.startswith((f"branches.{self.spec.name}.", f"heads.{self.spec.name}."))}
        if set(own) != expected:
            raise BundleError(f"task {self.spec.name!r}: package tensors do not match a {self.layers}-layer branch "
                              f"(missing {sorted(expected - set(own))[:3]}, unexpected {sorted(set(own) - expected)[:3]})")
        # only into the task's own modules: a quantised trunk's modules would not take a partial state dict
        name = self.spec.name
        if name in model.branches:
            model.branches[name].load_state_dict({k[len("branch."):]: v for k, v in self.tensors.items()
                                                  if k.startswith("branch.")})
        model.heads[name].load_state_dict({k[len("head."):]: v for k, v in self.tensors.items() if k.startswith("head.")})


def package_from_run(run_dir: Path, task: str, which: str = "best") -> TaskPackage:
    """Cut one task out of a trained run (its best checkpoint for that task)."""
    run = RunDir.open(run_dir)
    if task not in {s.name for s in run.specs()}:
        raise BundleError(f"{run_dir}: the run has no task {task!r} (has: {', '.join(s.name for s in run.specs())})")
    model = run.model_for(task, which)
    best = run.results().get("best", {}).get(task, {})
    entry = next(t for t in run.cfg.tasks if t.name == task)
    info = {"run": str(Path(run_dir).resolve()), "checkpoint": which, "dev_primary": best.get("score"),
            "max_seq_length": run.cfg.model.max_seq_length,
            # how the task's dev set was drawn (caps, re-splits): the bundle scores it again under a precision
            "eval": {"entry": entry.model_dump(mode="json", exclude_none=True), "data_seed": run.cfg.data_seed}}
    return TaskPackage.from_model(model, task, info)


def load_package(source: Path, task: Optional[str] = None) -> TaskPackage:
    """A task package directory, or a run directory (then ``task`` names which of its tasks)."""
    source = Path(source)
    if (source / "task.json").exists():
        pkg = TaskPackage.read(source)
        if task and pkg.spec.name != task:
            raise BundleError(f"{source}: package is for task {pkg.spec.name!r}, not {task!r}")
        return pkg
    if (source / "config.yaml").exists():
        if task is None:
            raise BundleError(f"{source} is a run: name the task to take from it")
        return package_from_run(source, task)
    raise BundleError(f"{source}: neither a task package (task.json) nor a run (config.yaml)")
