"""Export a trained task (or a bundle) to standard formats: a Hugging Face model directory (``hf``) that
``transformers`` loads, and ONNX (``onnx``) that ONNX Runtime runs, each checked against manytask's own output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from manytask.export.source import FORMATS, ExportError, source_model  # noqa: F401 (the package's names)


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
