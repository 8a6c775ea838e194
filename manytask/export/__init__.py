"""Export a trained task (or a bundle) to standard formats: a Hugging Face model directory (``hf``) that
``transformers`` loads, and ONNX (``onnx``) that ONNX Runtime runs, each checked against manytask's own output."""

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


def export(source: Path, to: Path, fmt: str, task: Optional[str] = None) -> dict:
    """Write ``task`` of a run or bundle (``onnx``: every task of a bundle when no task is named) to ``to``."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "hf":
        from manytask.export.hf import export_hf

        if task is None:
            raise ExportError("format hf exports one task: name it with --task")
        return export_hf(source, task, Path(to))
    from manytask.export.onnx import export_onnx

    return export_onnx(source, task, Path(to))
