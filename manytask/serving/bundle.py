"""A bundle: one frozen trunk stored once, plus one directory per task (branch layers, head, spec, metrics).

    BUNDLE/manifest.json            format, trunk hash and sizes, task -> directory and file hashes
    BUNDLE/trunk/                   encoder config, tokenizer, trunk.safetensors
    BUNDLE/tasks/<name>@<hash>/     task.safetensors (branch.* and head.*), task.json

Changing a task writes a new task directory, then replaces the manifest atomically, then deletes
the old directory: an interrupted change leaves the previous bundle whole, and the other tasks'
files are never touched. A task records the trunk hash it was trained on; one that differs from
the bundle's trunk is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors.torch import load_file, save_file

from manytask.data.loading import file_sha256
from manytask.models.multitask import MultiTaskModel
from manytask.tasks import TaskSpec
from manytask.training.checkpoint import atomic_write, atomic_write_json

FORMAT = "manytask-bundle/1"
TASK_FORMAT = "manytask-task/1"


class BundleError(ValueError):
    """A bundle or task package that cannot be used; the message names the task and the file."""


TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # also a directory name and a URL segment


def check_task_name(name: str) -> None:
    if not TASK_NAME.match(name):
        raise BundleError(f"task name {name!r} is not valid: 1-64 letters, digits, '_' or '-', starting with a "
                          "letter or digit")


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (names, dtypes, shapes, values), independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def trunk_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


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

    @classmethod
    def from_model(cls, model: MultiTaskModel, task: str, info: Optional[dict] = None) -> "TaskPackage":
        state = model.state_dict()
        tensors = {}
        for k, v in state.items():
            for prefix, new in ((f"branches.{task}.", "branch."), (f"heads.{task}.", "head.")):
                if k.startswith(prefix):
                    tensors[new + k[len(prefix):]] = v.detach().cpu().clone().contiguous()
        return cls(model.specs[task], model.split_depth[task], model.branch_size(task), model.pooling,
                   tensors_hash(trunk_tensors(state)), tensors, info or {})

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(directory / "task.safetensors"))
        meta = {"format": TASK_FORMAT, "spec": self.spec.model_dump(mode="json", exclude_none=True),
                "split_depth": self.split_depth, "layers": self.layers, "pooling": self.pooling,
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
            tensors = load_file(str(directory / "task.safetensors"))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise BundleError(f"{directory / 'task.safetensors'}: not readable as safetensors ({e})") from None
        return cls(spec, *fields, tensors, meta.get("info", {}) if isinstance(meta.get("info"), dict) else {})

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
                out = probe.to(device).eval()(ids, torch.ones_like(ids), torch.zeros_like(ids), tasks=[name])[name]
        except BundleError:
            raise
        except Exception as e:
            raise BundleError(f"task {name!r}: a probe forward pass failed ({type(e).__name__}: {e})") from None
        want = {"classification": (1, self.spec.num_outputs), "regression": (1,),
                "tagging": (1, ids.shape[1], self.spec.num_outputs)}[self.spec.kind]
        if tuple(out.shape) != want or not torch.isfinite(out).all():
            raise BundleError(f"task {name!r}: the probe forward pass gave {tuple(out.shape)} "
                              f"{'non-finite ' if not torch.isfinite(out).all() else ''}outputs, expected {want}")

    def attach(self, model: MultiTaskModel) -> None:
        """Add this task (branch and head) to a model that has the same trunk."""
        from manytask.models.heads import make_head

        if self.pooling != model.pooling:
            raise BundleError(f"task {self.spec.name!r} pools with {self.pooling!r}, the bundle with {model.pooling!r}")
        model.specs[self.spec.name] = self.spec
        model.add_branch(self.spec.name, self.layers, self.split_depth, fresh=True)
        indicator = self.tensors.get("head.indicator.weight")
        if indicator is not None:  # a slice-based-learning head: its slices are in the weights' shape
            from manytask.models.slicing import SBLHead

            model.heads[self.spec.name] = SBLHead(model.hidden_size, self.spec.num_outputs, 0.0, indicator.shape[0],
                                                  self.spec.kind)
        else:
            model.heads[self.spec.name] = make_head(self.spec.kind, model.hidden_size, self.spec.num_outputs, 0.0)
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
    from manytask.runs import Run

    run = Run.open(run_dir)
    if task not in {s.name for s in run.specs()}:
        raise BundleError(f"{run_dir}: the run has no task {task!r} (has: {', '.join(s.name for s in run.specs())})")
    model = run.model_for(task, which)
    results = json.loads((Path(run_dir) / "results.json").read_text()) if (Path(run_dir) / "results.json").exists() else {}
    best = results.get("best", {}).get(task, {})
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


# ---- the bundle ---------------------------------------------------------------------------------------------
class Bundle:
    def __init__(self, root: Path):
        self.root = Path(root)
        if not (self.root / "manifest.json").is_file():
            raise BundleError(f"{self.root} is not a bundle (no manifest.json)")

    @property
    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{path}: unreadable or damaged ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "trunk" not in manifest:
            raise BundleError(f"{path}: not a {FORMAT} manifest")
        return manifest

    @property
    def trunk_sha256(self) -> str:
        return self.manifest["trunk"]["sha256"]

    def task_names(self) -> list[str]:
        return sorted(self.manifest["tasks"])

    @classmethod
    def create(cls, root: Path, model: MultiTaskModel, tokenizer, max_seq_length: int,
               origin: Optional[dict] = None) -> "Bundle":
        """A bundle holding ``model``'s trunk and no task yet (``origin``: where the trunk comes from, and
        whether it was frozen or fine-tuned there)."""
        root = Path(root)
        if (root / "manifest.json").exists():
            raise BundleError(f"{root} already holds a bundle")
        trunk = {k: v.detach().cpu() for k, v in trunk_tensors(model.state_dict()).items()}
        (root / "trunk").mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(root / "trunk"))
        tokenizer.save_pretrained(str(root / "trunk"))
        atomic_write(root / "trunk" / "trunk.safetensors",
                     lambda tmp: save_file({k: v.contiguous() for k, v in trunk.items()}, tmp))
        (root / "tasks").mkdir(exist_ok=True)
        atomic_write_json(root / "manifest.json", {
            "format": FORMAT,
            "trunk": {"sha256": tensors_hash(trunk), "num_layers": model.num_layers, "hidden_size": model.hidden_size,
                      "pooling": model.pooling, "max_seq_length": max_seq_length, **(origin or {})},
            "tasks": {},
        })
        return cls(root)

    @classmethod
    def from_run(cls, run_dir: Path, root: Path, which: str = "last") -> "Bundle":
        """Any trained run as one bundle: its encoder becomes the trunk (frozen or fine-tuned, as the manifest
        records) and each of its tasks a package (head and branch), so a multi-task model runs its encoder
        once for all the tasks a request asks. ``which="best"`` (each task's best checkpoint) needs a frozen
        trunk: otherwise the tasks' checkpoints would hold different encoders."""
        from manytask.runs import Run

        run = Run.open(run_dir)
        frozen = run.cfg.model.freeze_trunk
        if which == "best" and not frozen:
            raise BundleError(f"{run_dir}: each task's best checkpoint holds its own encoder (the trunk was "
                              "fine-tuned): bundle the last checkpoint, one model")
        model = run.model_for(None, "last")
        bundle = cls.create(root, model.share([]), run.tokenizer(), run.cfg.model.max_seq_length,
                            {"frozen": frozen, "from_run": str(Path(run_dir).resolve()), "checkpoint": which})
        for spec in run.specs():
            bundle.put(package_from_run(run_dir, spec.name, which))
        return bundle

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, pkg: TaskPackage, replace: Optional[bool] = None, model: Optional[MultiTaskModel] = None) -> dict:
        """Add (replace=False), update (True) or either (None) one task; the others are not touched.

        The package is checked against the trunk (``model``'s, or the bundle's own, loaded) before
        anything is written."""
        name = pkg.spec.name
        check_task_name(name)
        with self._lock():
            manifest = self.manifest
            trunk = manifest["trunk"]
            if pkg.trunk_sha256 != trunk["sha256"]:
                raise BundleError(f"task {name!r} was trained on trunk {pkg.trunk_sha256[:12]}…, this bundle's trunk is "
                                  f"{trunk['sha256'][:12]}… — it needs the same frozen encoder weights")
            if pkg.pooling != trunk["pooling"]:
                raise BundleError(f"task {name!r} pools with {pkg.pooling!r}, the bundle with {trunk['pooling']!r}")
            if pkg.split_depth + pkg.layers > trunk["num_layers"]:
                raise BundleError(f"task {name!r}: branch ends at layer {pkg.split_depth + pkg.layers}, "
                                  f"the trunk has {trunk['num_layers']}")
            exists = name in manifest["tasks"]
            if replace is False and exists:
                raise BundleError(f"task {name!r} is already in the bundle: use update")
            if replace is True and not exists:
                raise BundleError(f"task {name!r} is not in the bundle: use add")
            pkg.check(model if model is not None else self.trunk_model())
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.root / "tasks"))
            try:
                pkg.write(staging)
                files = {f: file_sha256(staging / f) for f in ("task.safetensors", "task.json")}
                digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
                final = self.root / "tasks" / f"{name}@{digest[:12]}"
                if final.exists():
                    shutil.rmtree(staging)
                else:
                    for f in staging.iterdir():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                    os.replace(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            old = manifest["tasks"].get(name, {}).get("dir")
            manifest["tasks"][name] = {"dir": f"tasks/{final.name}", "files": files, "split_depth": pkg.split_depth,
                                       "layers": pkg.layers, "kind": pkg.spec.kind, "labels": pkg.spec.labels}
            atomic_write_json(self.root / "manifest.json", manifest)
            if old and old != f"tasks/{final.name}":
                shutil.rmtree(self.root / old, ignore_errors=True)
            self._collect_garbage(manifest)
        return manifest["tasks"][name]

    def remove(self, name: str) -> None:
        with self._lock():
            manifest = self.manifest
            if name not in manifest["tasks"]:
                raise BundleError(f"task {name!r} is not in the bundle (has: {', '.join(sorted(manifest['tasks'])) or 'none'})")
            old = manifest["tasks"].pop(name)["dir"]
            atomic_write_json(self.root / "manifest.json", manifest)
            shutil.rmtree(self.root / old, ignore_errors=True)

    def _collect_garbage(self, manifest: dict) -> None:
        """Delete task directories no manifest entry points to (left by an interrupted change)."""
        live = {Path(t["dir"]).name for t in manifest["tasks"].values()}
        for d in (self.root / "tasks").iterdir():
            if d.is_dir() and d.name not in live and (d.name.startswith(".staging-") or "@" in d.name):
                shutil.rmtree(d, ignore_errors=True)

    def package(self, name: str) -> TaskPackage:
        entry = self.manifest["tasks"].get(name)
        if entry is None:
            raise BundleError(f"task {name!r} is not in the bundle")
        d = self.root / entry["dir"]
        for f, h in entry["files"].items():
            if file_sha256(d / f) != h:
                raise BundleError(f"{d / f}: content hash differs from the manifest — the bundle is damaged")
        pkg = TaskPackage.read(d)
        if pkg.trunk_sha256 != self.trunk_sha256:
            raise BundleError(f"task {name!r} records trunk {pkg.trunk_sha256[:12]}…, the bundle's trunk is "
                              f"{self.trunk_sha256[:12]}…: refusing to serve it")
        return pkg

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.root / "trunk"))

    def trunk_model(self) -> MultiTaskModel:
        """The trunk with no task: the base every snapshot of the merged model attaches tasks to."""
        from transformers import AutoConfig, AutoModel

        manifest = self.manifest
        config = AutoConfig.from_pretrained(str(self.root / "trunk"))
        pooling = manifest["trunk"]["pooling"]
        encoder = AutoModel.from_config(config, add_pooling_layer=pooling == "pooler")
        model = MultiTaskModel(encoder, [], pooling=pooling, dropout=0.0)
        state = load_file(str(self.root / "trunk" / "trunk.safetensors"))
        if tensors_hash(state) != manifest["trunk"]["sha256"]:
            raise BundleError(f"{self.root / 'trunk' / 'trunk.safetensors'}: content hash differs from the manifest")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("encoder.") for k in missing):
            raise BundleError(f"{self.root}: trunk weights do not fit the trunk config")
        return model.eval()

    def merged_model(self, tasks: Optional[list[str]] = None) -> MultiTaskModel:
        model = self.trunk_model()
        for name in tasks or self.task_names():
            self.package(name).attach(model)
        return model.eval()
