"""The teacher's side of BAM: a run's predictions on its training examples, written to a target store that a
student learns from (``training.objectives.TeacherObjective`` reads it back with teacher annealing)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

from manytask.config import dump_config
from manytask.data.features import encode
from manytask.data.loading import load_tasks
from manytask.data.target_store import TargetError, TeacherTargets, targets_path
from manytask.evaluation.scoring import predict_logits
from manytask.kinds import kind_of
from manytask.runs import Run

log = logging.getLogger(__name__)


def write_targets(run_dir: Path, store: Path, which: str = "best", provenance: Optional[dict] = None) -> list[Path]:
    """Predict every task of the run on its own training examples; one file per task in ``store``.

    Each task uses the checkpoint that was best for it on dev (or the last one).
    """
    run = Run.open(run_dir)
    data, _ = load_tasks(run.cfg, with_train=True)
    tok = run.tokenizer()
    digest = hashlib.sha256(dump_config(run.cfg).encode()).hexdigest()[:16]
    written = []
    for d in data:
        if not kind_of(d.spec).distillable:
            raise TargetError(f"task {d.name!r}: teacher targets for {d.spec.kind} tasks are not supported")
        model = run.model_for(d.name, which)
        feats = encode(d.train, d.spec, tok, run.cfg.model.max_seq_length)
        logits = predict_logits(model, d.spec, feats, run.cfg.train.eval_batch_size, tok.pad_token_id, run.precision)
        teacher = {"run": str(Path(run_dir).resolve()), "checkpoint": which, "config_sha256": digest,
                   "seed": run.cfg.seed, "encoder": run.cfg.model.encoder, **(provenance or {})}
        path = targets_path(store, d.name)
        TeacherTargets(d.name, d.spec.kind, d.spec.labels, feats.ids, logits.numpy(), teacher).save(path)
        log.info("%s: wrote %d teacher targets to %s", d.spec.title, len(feats), path)
        written.append(path)
    return written
