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
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from manytask.bundles.package import BundleError, TaskPackage, check_task_name, package_from_run, trunk_tensors
from manytask.encoders.loading import encoder_from_dir
from manytask.io import atomic_write_json, file_sha256, load_tensors, save_tensors, tensors_hash
from manytask.models.multitask import MultiTaskModel
from manytask.models.rundir import RunDir

FORMAT = "manytask-bundle/1"


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
        trunk = {k: v.detach().cpu() for k, v in trunk_tensors(model.state_dict(), model.pooling).items()}
        (root / "trunk").mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(root / "trunk"))
        tokenizer.save_pretrained(str(root / "trunk"))
        save_tensors(root / "trunk" / "trunk.safetensors", trunk)
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
        run = RunDir.open(run_dir)
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
        manifest = self.manifest
        pooling = manifest["trunk"]["pooling"]
        encoder = encoder_from_dir(self.root / "trunk", pooler=pooling == "pooler")
        model = MultiTaskModel(encoder, [], pooling=pooling, dropout=0.0)
        state = load_tensors(self.root / "trunk" / "trunk.safetensors")
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
