"""The teacher's side of BAM: write a run's predictions on its training examples to a target store,
and the student's loss that reads them back with teacher annealing."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import torch

from manytask.config import DistillConfig, dump_config
from manytask.data.features import encode
from manytask.data.loading import load_tasks
from manytask.distill.store import TargetError, TeacherTargets, targets_path
from manytask.evaluation.predict import predict_logits
from manytask.tasks import TaskSpec
from manytask.training.losses import distill_loss, hinton_loss, teacher_annealing
from manytask.training.trainer import TaskFeatures

log = logging.getLogger(__name__)


def write_targets(run_dir: Path, store: Path, which: str = "best", provenance: Optional[dict] = None) -> list[Path]:
    """Predict every task of the run on its own training examples; one file per task in ``store``.

    Each task uses the checkpoint that was best for it on dev (or the last one).
    """
    from manytask.runs import Run  # runs imports the trainer; keep this module importable from it

    run = Run.open(run_dir)
    data, _ = load_tasks(run.cfg, with_train=True)
    tok = run.tokenizer()
    digest = hashlib.sha256(dump_config(run.cfg).encode()).hexdigest()[:16]
    written = []
    for d in data:
        if d.spec.kind == "tagging":
            raise TargetError(f"task {d.name!r}: teacher targets for tagging tasks are not supported")
        model = run.model_for(d.name, which)
        feats = encode(d.train, d.spec, tok, run.cfg.model.max_seq_length)
        logits = predict_logits(model, d.spec, feats, run.cfg.train.eval_batch_size, tok.pad_token_id,
                                run.cfg.train.precision)
        teacher = {"run": str(Path(run_dir).resolve()), "checkpoint": which, "config_sha256": digest,
                   "seed": run.cfg.seed, "encoder": run.cfg.model.encoder, **(provenance or {})}
        path = targets_path(store, d.name)
        TeacherTargets(d.name, d.spec.kind, d.spec.labels, feats.ids, logits.numpy(), teacher).save(path)
        log.info("%s: wrote %d teacher targets to %s", d.spec.title, len(feats), path)
        written.append(path)
    return written


class TeacherLoss:
    """BAM's student loss: per example, lam * gold + (1 - lam) * teacher, with lam from the schedule.

    Teacher logits are looked up by example id once, at construction, and indexed by the
    batch's example indices during training.
    """

    def __init__(self, cfg: DistillConfig, tasks: list[TaskFeatures]):
        self.cfg = cfg
        self.teacher: dict[str, torch.Tensor] = {}
        for t in tasks:
            if t.spec.kind == "tagging":
                raise TargetError(f"task {t.spec.name!r}: distillation of tagging tasks is not supported")
            path = targets_path(Path(cfg.targets), t.spec.name)
            if not path.is_file():
                raise TargetError(f"task {t.spec.name!r}: no teacher targets at {path}")
            self.teacher[t.spec.name] = TeacherTargets.load(path).aligned(t.spec, t.train.ids, str(path))

    def lam(self, progress: float) -> float:
        return teacher_annealing(progress, self.cfg.schedule, self.cfg.lam)

    def log_state(self, progress: float) -> dict:
        return {"lambda": self.lam(progress)}

    def __call__(self, spec: TaskSpec, logits: torch.Tensor, batch: dict, progress: float) -> torch.Tensor:
        teacher = self.teacher[spec.name][batch["index"].cpu()].to(logits.device)
        loss = hinton_loss if self.cfg.style == "hinton" else distill_loss
        return loss(spec, logits, batch["labels"], teacher, self.lam(progress), self.cfg.temperature)
