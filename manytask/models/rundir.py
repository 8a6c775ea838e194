"""A trained run's directory, read: its config, tasks, tokenizer and models. Training writes runs
(``manytask.runs``); serving, bundles, ensembles and the API read them through here.

    RUN/config.yaml  encoder/  data.json  metrics.jsonl  checkpoints/{last,best}.json  results.json  eval.json
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from manytask.config import RunConfig, load_config
from manytask.encoders.loading import encoder_from_dir
from manytask.errors import NotFound, UnknownTask
from manytask.models.build import build_model
from manytask.models.checkpoints import CheckpointDir
from manytask.models.multitask import MultiTaskModel
from manytask.models.weights import load_weights
from manytask.runtime import inference_precision, resolve_device


class RunDir:
    """A trained run, reopened from its directory. Models are loaded once per checkpoint and kept."""

    def __init__(self, path: Path, cfg: RunConfig):
        self.path, self.cfg = Path(path), cfg
        self._models: dict[Path, MultiTaskModel] = {}

    @classmethod
    def open(cls, path: Path):
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise NotFound(f"{path} is not a manytask run (no config.yaml)")
        if not (path / "checkpoints" / "best.json").exists() and not (path / "checkpoints" / "last.json").exists():
            raise NotFound(f"{path}: the run has no checkpoint yet")
        return cls(path, load_config(path / "config.yaml", saved=True))

    @staticmethod
    def checkpoints(path: Path) -> CheckpointDir:
        return CheckpointDir(Path(path) / "checkpoints")

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.train.device)

    @property
    def precision(self) -> str:
        """The precision the run predicts in on this machine (``auto`` resolved; fp16 from a GPU is fp32 here)."""
        return inference_precision(self.cfg.train.precision, self.device)

    @cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path / "encoder"))

    def tokenizer(self):
        return self._tokenizer

    def specs(self):
        trained = json.loads((self.path / "data.json").read_text())["tasks"]
        specs = [t.resolve(Path.cwd()) for t in self.cfg.tasks]
        return [s for s in specs if s.name in trained]

    def spec(self, task: str):
        specs = {s.name: s for s in self.specs()}
        if task not in specs:
            raise UnknownTask(f"{self.path}: the run has no task {task!r} (has: {', '.join(specs)})")
        return specs[task]

    def weights(self, task: Optional[str] = None, which: str = "best") -> Path:
        """The weights that were best on dev for ``task`` (``which="best"``), or the last ones."""
        ckpt = self.checkpoints(self.path)
        best = ckpt.best()
        if which == "best" and task is not None and task in best:
            return ckpt.root / best[task]["weights"]
        info = ckpt.last()
        if info is None:
            raise NotFound(f"{self.path}: no checkpoint")
        return ckpt.root / info["weights"]

    def model_for(self, task: Optional[str] = None, which: str = "best") -> MultiTaskModel:
        """The model with the weights that were best for ``task`` (or the last weights), in eval mode on the
        run's device; loaded once per checkpoint."""
        weights = self.weights(task, which)
        if weights not in self._models:
            encoder = encoder_from_dir(self.path / "encoder", self.cfg.model.dropout,
                                       pooler=self.cfg.model.pooling == "pooler")
            model = build_model(self.cfg, self.specs(), encoder)
            load_weights(weights, model)
            self._models[weights] = model.to(self.device).eval()
        return self._models[weights]

    def results(self) -> dict:
        path = self.path / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}
