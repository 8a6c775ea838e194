"""One task, or a whole bundle (the shared trunk once, an output per task), as an ONNX graph with dynamic batch
and sequence axes, checked with ONNX Runtime against PyTorch on real inputs before it is kept.

    OUT/model.onnx, OUT/tokenizer files, OUT/onnx.json (tasks, outputs, the check and its tolerance)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from manytask.errors import ManytaskError
from manytask.export.source import ExportError, source_model
from manytask.inference import tokenize
from manytask.kinds import kind_of

INSTALL = "pip install -e '.[onnx]'"
TOLERANCE = 1e-4  # largest |difference| of any logit allowed between ONNX Runtime and PyTorch (fp32)
OPSET = 18


class TaskOutputs(nn.Module):
    """The merged model as ONNX sees it: three inputs, one logits output per task (in the order of ``tasks``)."""

    def __init__(self, model, tasks: list[str]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids, attention_mask, token_type_ids, tasks=self.tasks)
        return tuple(out[t].logits for t in self.tasks)


def _probe(tokenizer, max_len: int, pairs: bool) -> dict:
    texts = ["A gem of a film, warm and funny, and far too long to be short.", "Dull.", "The plot makes no sense."]
    return tokenize(tokenizer, texts, ["Someone smiles.", "A man plays a guitar.", "x"] if pairs else None, max_len)


def export_onnx(source: Path, task: Optional[str], out: Path) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ManytaskError(f"--format onnx needs ONNX Runtime (and onnx): install them with {INSTALL}") from None
    model, tokenizer, max_len = source_model(source, task)
    tasks = [task] if task else model.task_names
    wrapper = TaskOutputs(model, tasks).eval()
    batch = _probe(tokenizer, max_len, pairs=all(model.specs[t].pair for t in tasks))
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    for t in tasks:
        axes[t] = {0: "batch", 1: "sequence"} if kind_of(model.specs[t]).word_level else {0: "batch"}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), input_names=list(axes)[:3], output_names=tasks,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    tokenizer.save_pretrained(str(out))
    # the check: ONNX Runtime against PyTorch on other real inputs (another batch size and length)
    check = _probe(tokenizer, max_len, pairs=all(model.specs[t].pair for t in tasks))
    check = {k: v[:2, : v.shape[1] - 1] if k != "attention_mask" else v[:2, : v.shape[1] - 1] for k, v in check.items()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]  # segment ids are dropped where the encoder reads none
    got = session.run(tasks, {k: check[k].numpy() for k in inputs})
    with torch.no_grad():
        want = [w.numpy() for w in wrapper(check["input_ids"], check["attention_mask"], check["token_type_ids"])]
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if worst > TOLERANCE:
        path.unlink()
        raise ExportError(f"the ONNX graph's outputs differ from PyTorch's by {worst:.2e} (tolerance {TOLERANCE})")
    meta = {"tasks": tasks, "outputs": {t: {"kind": model.specs[t].kind, "labels": model.specs[t].labels,
                                            "label_range": model.specs[t].label_range} for t in tasks},
            "inputs": inputs, "max_seq_length": max_len, "opset": OPSET,
            "check": {"max_abs_difference": worst, "tolerance": TOLERANCE, "batch": 2, "runtime": ort.__version__}}
    (out / "onnx.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
