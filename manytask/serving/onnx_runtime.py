"""ONNX Runtime as a serving runtime (``serve --runtime onnx``): a bundle's merged model exported once into
pieces (embeddings, the trunk between split depths, each task's branch and head; ``export.onnx``), int8 by
ONNX Runtime's own dynamic quantiser where asked, and served by the same micro-batcher as PyTorch: the trunk
once per batch to the deepest split it needs, then each task on its own rows.

The export is cached beside the bundle's scores, by manifest hash and precision, written to a temporary
directory and renamed into place. The task set is fixed while serving (a changed bundle needs a restart).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from manytask.bundles import Bundle
from manytask.inference import answer_batch
from manytask.models.multitask import TaskOutput
from manytask.models.precision import PrecisionError
from manytask.serving.plan import manifest_hash
from manytask.serving.precision import cache_root
from manytask.serving.predictor import Predictor, _json
from manytask.tasks import TaskSpec

PRECISIONS = ("fp32", "int8")


def pieces_dir(bundle: Bundle, precision: str) -> Path:
    """The bundle's ONNX pieces in ``precision``, exported (and quantised) on first use."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"the ONNX runtime serves {' or '.join(PRECISIONS)}, not {precision!r}")
    from manytask.export.onnx import export_pieces, quantize_pieces

    root = cache_root(bundle) / "onnx" / manifest_hash(bundle)
    target = root / precision
    if (target / "pieces.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    fp32 = root / "fp32"
    if fp32.exists() and not (fp32 / "pieces.json").exists():  # left by an interrupted export
        shutil.rmtree(fp32)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        if not (fp32 / "pieces.json").exists():
            export_pieces(bundle.merged_model(), bundle.tokenizer(), bundle.manifest["trunk"]["max_seq_length"],
                          Path(tmp) / "fp32")
            if not fp32.exists():
                os.replace(Path(tmp) / "fp32", fp32)
        if precision == "int8":
            quantize_pieces(fp32, Path(tmp) / "int8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp) / "int8", target)
    return target


class OnnxModel(nn.Module):
    """The pieces behind the interface of a merged model's forward pass (a ``TaskOutput`` per task), so the
    server's answers and the dev scores go through the same code as PyTorch's."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: Optional[int] = None):
        super().__init__()
        from manytask.export.onnx import OnnxPieces

        reference = bundle.merged_model()
        self.specs: dict[str, TaskSpec] = dict(reference.specs)
        self.task_names = list(reference.task_names)
        self.split_depth = dict(reference.split_depth)
        self._layers = {t: reference.layers_run([t]) for t in self.task_names}
        self._branch = {t: reference.branch_size(t) for t in self.task_names}
        self.pieces = OnnxPieces(pieces_dir(bundle, precision), threads=threads)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # says the device (the CPU) to callers

    def layers_run(self, tasks=None) -> int:
        names = list(tasks) if tasks is not None else self.task_names
        return max(self.split_depth[n] for n in names) + sum(self._branch[n] for n in names)

    def forward(self, input_ids, attention_mask, token_type_ids=None, tasks=None, rows=None, extras=False):
        names = list(tasks) if tasks is not None else self.task_names
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        index = {t: r.cpu().numpy() for t, r in rows.items()} if rows else None
        got = self.pieces.run(input_ids.cpu().numpy(), attention_mask.cpu().numpy(), types.cpu().numpy(), names, index)
        return {t: TaskOutput(torch.from_numpy(v)) for t, v in got.items()}


class OnnxPredictor(Predictor):
    """A bundle served by ONNX Runtime (fp32, or int8 by its quantiser); the task set is fixed."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: Optional[int] = None):
        self.bundle = bundle
        self.tokenizer = bundle.tokenizer()
        self.max_length = bundle.manifest["trunk"]["max_seq_length"]
        self.device = torch.device("cpu")
        self.model = OnnxModel(bundle, precision, threads).eval()
        self.weights, self.precision = f"onnx-{precision}", "fp32"

    def snapshot(self):
        return self.model

    def specs(self, snapshot=None) -> dict[str, TaskSpec]:
        return dict(self.model.specs)

    def layers_run(self, tasks: list[str]) -> int:
        return self.model.layers_run(tasks)

    def predict(self, texts, pairs, tasks, snapshot=None, rows=None) -> list[dict]:
        return _json(answer_batch(self.model, self.model.specs, self.tokenizer, self.max_length, self.device, "fp32",
                                  texts, pairs, tasks, rows))
