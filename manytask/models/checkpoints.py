"""Checkpoints written atomically: a kill at any moment leaves the previous one intact.

Each checkpoint is a set of step-stamped files; a small JSON pointer, replaced atomically
last, says which set is current. Old sets are deleted only after the pointer moved on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from manytask.io import atomic_write, atomic_write_json
from manytask.models.weights import save_weights


class CheckpointDir:
    """``checkpoints/`` of a run: the last training state, and the best weights per task."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._written_step: Optional[int] = None  # weights of this step already written by this process

    def _write_weights(self, step: int, model: torch.nn.Module) -> Path:
        """Always rewrite a step's weights once per process: a file left by a killed attempt may be stale."""
        path = self.weights_path(step)
        if self._written_step != step:
            save_weights(path, model)
            self._written_step = step
        return path

    @property
    def pointer(self) -> Path:
        return self.root / "last.json"

    def weights_path(self, step: int) -> Path:
        return self.root / f"weights-{step:08d}.safetensors"

    def save_last(self, step: int, model: torch.nn.Module, state: dict) -> None:
        """Weights (safetensors), optimizer/scheduler/RNG state, then the pointer."""
        weights = self._write_weights(step, model)
        train_state = self.root / f"state-{step:08d}.pt"
        atomic_write(train_state, lambda tmp: torch.save(state, tmp))
        atomic_write_json(self.pointer, {"step": step, "weights": weights.name, "state": train_state.name})
        self.prune()

    def last(self) -> Optional[dict]:
        if not self.pointer.exists():
            return None
        return json.loads(self.pointer.read_text())

    def load_state(self) -> Optional[tuple[int, Path, dict]]:
        info = self.last()
        if info is None:
            return None
        # CPU first: a run trained on a GPU resumes on a machine without one (the trainer moves the state on)
        state = torch.load(self.root / info["state"], weights_only=False, map_location="cpu")
        return info["step"], self.root / info["weights"], state

    @property
    def best_path(self) -> Path:
        return self.root / "best.json"

    def best(self) -> dict:
        return json.loads(self.best_path.read_text()) if self.best_path.exists() else {}

    def restore_best(self, best: dict) -> None:
        """On resume, the best-so-far record is the one saved with the resumed state."""
        atomic_write_json(self.best_path, best)
        self.prune()

    def save_best(self, best: dict, step: int, model: torch.nn.Module) -> None:
        """Record which step's weights are best for each task; keep those weights."""
        self._write_weights(step, model)
        atomic_write_json(self.best_path, best)
        self.prune()

    def prune(self) -> None:
        """Delete weights and states no pointer refers to any more."""
        keep = set()
        info = self.last()
        if info:
            keep.update({info["weights"], info["state"]})
        keep.update(v["weights"] for v in self.best().values())
        for f in self.root.iterdir():
            if f.name.startswith(("weights-", "state-")) and f.name not in keep:
                f.unlink()
