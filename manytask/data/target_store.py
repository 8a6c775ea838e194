"""Teacher-target store: a teacher's logits on a task's training examples, keyed by stable example ids.

One safetensors file per task (``<task>.safetensors``) holding the logits, with the ids, the
label space, the teacher's provenance and a content hash in its metadata. A student checks
coverage, label space and shape before it trains, and fails naming what does not fit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from manytask.errors import ManytaskError
from manytask.io import atomic_write
from manytask.tasks import TaskSpec

FORMAT = "manytask-teacher-targets/1"


class TargetError(ManytaskError, ValueError):
    """A teacher-target store that does not fit the student's task; the message says why and where."""


def content_hash(ids: Sequence[str], logits: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(ids).encode())
    h.update(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass
class TeacherTargets:
    task: str
    kind: str
    labels: Optional[list[str]]
    ids: list[str]
    logits: np.ndarray  # [n, num_outputs], float32
    teacher: dict = field(default_factory=dict)  # provenance: run directory, recipe, seed, config digest

    def __post_init__(self):
        self.logits = np.asarray(self.logits, dtype=np.float32)
        if self.logits.ndim != 2 or self.logits.shape[0] != len(self.ids):
            raise TargetError(f"task {self.task!r}: {len(self.ids)} ids but logits of shape {self.logits.shape}")
        if len(set(self.ids)) != len(self.ids):
            raise TargetError(f"task {self.task!r}: duplicate example ids in the teacher targets")

    @property
    def hash(self) -> str:
        return content_hash(self.ids, self.logits)

    def save(self, path: Path) -> None:
        meta = {"format": FORMAT, "task": self.task, "kind": self.kind, "labels": self.labels, "ids": self.ids,
                "teacher": self.teacher, "hash": self.hash}
        tensors = {"logits": torch.from_numpy(self.logits.copy())}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"manytask": json.dumps(meta)}))

    @classmethod
    def load(cls, path: Path) -> "TeacherTargets":
        path = Path(path)
        if not path.is_file():
            raise TargetError(f"no teacher targets at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("manytask", "{}"))
                logits = f.get_tensor("logits").numpy()
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise TargetError(f"{path}: not a teacher-target file ({e})") from None
        if meta.get("format") != FORMAT:
            raise TargetError(f"{path}: not a teacher-target file (format {meta.get('format')!r}, expected {FORMAT})")
        targets = cls(meta["task"], meta["kind"], meta["labels"], meta["ids"], logits, meta.get("teacher", {}))
        if targets.hash != meta["hash"]:
            raise TargetError(f"{path}: content hash mismatch — the file is corrupt or was edited")
        return targets

    def aligned(self, spec: TaskSpec, ids: Sequence[str], source: str = "") -> torch.Tensor:
        """Logits in the order of ``ids``, after checking task, kind, label space, shape and coverage."""
        where = source or f"teacher targets of {self.task!r}"
        if self.task != spec.name:
            raise TargetError(f"{where}: made for task {self.task!r}, not {spec.name!r}")
        if self.kind != spec.kind:
            raise TargetError(f"{where}: teacher is {self.kind}, the task is {spec.kind}")
        if (self.labels or None) != (spec.labels or None):
            raise TargetError(f"{where}: label space differs — teacher {self.labels}, task {spec.labels}")
        if self.logits.shape[1] != spec.num_outputs:
            raise TargetError(f"{where}: teacher has {self.logits.shape[1]} outputs, the task needs {spec.num_outputs}")
        row = {i: n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in row]
        if missing:
            raise TargetError(f"{where}: no target for {len(missing)} of {len(ids)} training examples "
                              f"(first: {', '.join(missing[:3])}) — the teacher saw other data (caps, data seed, files?)")
        return torch.from_numpy(self.logits[[row[i] for i in ids]])


def targets_path(store: Path, task: str) -> Path:
    return Path(store) / f"{task}.safetensors"
