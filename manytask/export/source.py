"""What an export starts from: a task (or every task) of a run or a bundle, as one model on the CPU; and
``ExportError``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from manytask.errors import ManytaskError, NotFound

FORMATS = ("hf", "onnx")


class ExportError(ManytaskError, ValueError):
    """A task or bundle that cannot be exported as asked; the message says why and what can be."""


def source_model(source: Path, task: Optional[str] = None):
    """(MultiTaskModel, tokenizer, max length) from a bundle (``task``, or all its tasks) or a run (``task`` with
    its best checkpoint, or every task with the last one: one model), on the CPU, in eval mode."""
    from manytask.bundles import Bundle
    from manytask.models.rundir import RunDir

    source = Path(source)
    if (source / "manifest.json").exists():
        bundle = Bundle(source)
        return bundle.merged_model([task] if task else None), bundle.tokenizer(), bundle.manifest["trunk"]["max_seq_length"]
    if (source / "config.yaml").exists():
        run = RunDir.open(source)
        if task is not None:
            run.spec(task)
        model = run.model_for(task, "best" if task else "last")
        names = [task] if task else model.task_names
        return model.share(names).cpu().eval(), run.tokenizer(), run.cfg.model.max_seq_length
    raise NotFound(f"{source}: neither a run (config.yaml) nor a bundle (manifest.json)")
