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


# --- the merged bundle in pieces, for serving: the trunk once, then only the branches a batch asks for ---------

class _Embed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model.adapter.embed(input_ids, token_type_ids, attention_mask)


class _Layers(nn.Module):
    """Hidden states through some layers (trunk layers ``start``..``stop``, or a task's branch, then its head)."""

    def __init__(self, model, layers, task: Optional[str] = None):
        super().__init__()
        self.model, self.layers, self.task = model, nn.ModuleList(layers), task

    def forward(self, hidden, attention_mask):
        adapter = self.model.adapter
        context = adapter.context(hidden, attention_mask)
        for layer in self.layers:
            hidden = adapter.run_layer(layer, hidden, context)
        if self.task is None:
            return hidden
        hidden = adapter.final(hidden)
        head = self.model.heads[self.task]
        return head(self.model._pool(hidden, attention_mask)) if head.pools else head(hidden)


def _export(module: nn.Module, args: tuple, names: list[str], output: str, path: Path, token_axes: bool) -> None:
    module.eval()  # the exporter puts the module back in the mode it found it in: eval, never training (dropout)
    axes = {n: ({0: "batch", 1: "sequence", 2: "hidden"} if n == "hidden" else {0: "batch", 1: "sequence"})
            for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if token_axes else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=[output], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def export_pieces(model, tokenizer, max_len: int, out: Path) -> dict:
    """``model`` (a merged bundle model) as ONNX pieces under ``out``: ``embed.onnx``; ``trunk_A_B.onnx`` for
    the trunk layers between consecutive split depths; ``task_<name>.onnx`` (branch and head) per task. The
    pieces run in sequence give the model's logits: checked with ONNX Runtime against PyTorch (fp32) before
    the manifest ``pieces.json`` is written."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ManytaskError(f"the ONNX runtime needs ONNX Runtime (and onnx): install them with {INSTALL}") from None
    model = model.cpu().eval()
    out.mkdir(parents=True, exist_ok=True)
    batch = _probe(tokenizer, max_len, pairs=False)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    _export(_Embed(model), (ids, mask, types), ["input_ids", "attention_mask", "token_type_ids"], "hidden",
            out / "embed.onnx", True)
    depths = sorted({model.split_depth[t] for t in model.task_names})
    segments, start = [], 0
    with torch.no_grad():
        hidden = _Embed(model).eval()(ids, mask, types)
        for depth in depths:
            if depth > start:
                piece = _Layers(model, model.adapter.layers[start:depth]).eval()
                _export(piece, (hidden, mask), ["hidden", "attention_mask"], "out", out / f"trunk_{start}_{depth}.onnx",
                        True)
                hidden = piece(hidden, mask)
                segments.append([start, depth])
            start = depth
    tasks = {}
    for t in model.task_names:
        branch = list(model.branches[t]) if t in model.branches else []
        word_level = kind_of(model.specs[t]).word_level
        h = torch.randn(ids.shape[0], ids.shape[1], model.adapter.hidden_size)
        _export(_Layers(model, branch, t), (h, mask), ["hidden", "attention_mask"], "logits", out / f"task_{t}.onnx",
                word_level)
        tasks[t] = {"file": f"task_{t}.onnx", "split": model.split_depth[t]}
    meta = {"segments": segments, "tasks": tasks, "opset": OPSET, "runtime": ort.__version__}
    check = {k: v[:2, : v.shape[1] - 1] for k, v in _probe(tokenizer, max_len, pairs=False).items()}
    pieces = OnnxPieces(out, meta)
    got = pieces.run(check["input_ids"].numpy(), check["attention_mask"].numpy(), check["token_type_ids"].numpy(),
                     model.task_names)
    with torch.no_grad():
        want = model(check["input_ids"], check["attention_mask"], check["token_type_ids"])
    worst = max(float(np.abs(got[t] - want[t].logits.numpy()).max()) for t in model.task_names)
    if worst > TOLERANCE:
        raise ExportError(f"the ONNX pieces' outputs differ from PyTorch's by {worst:.2e} (tolerance {TOLERANCE})")
    meta["check"] = {"max_abs_difference": worst, "tolerance": TOLERANCE}
    from manytask.io import atomic_write_json

    atomic_write_json(out / "pieces.json", meta)
    return meta


def quantize_pieces(src: Path, dst: Path) -> dict:
    """Every piece of ``src`` with int8 weights by ONNX Runtime's dynamic quantiser (one scale per output channel;
    the embeddings stay fp32, as the heads and the embeddings do in PyTorch's int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = json.loads((src / "pieces.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    names = ["embed.onnx"] + [f"trunk_{a}_{b}.onnx" for a, b in meta["segments"]] + [t["file"] for t in meta["tasks"].values()]
    for name in names:
        if name == "embed.onnx":
            (dst / name).write_bytes((src / name).read_bytes())
        else:
            quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
    from manytask.io import atomic_write_json

    atomic_write_json(dst / "pieces.json", {**meta, "quantized": "dynamic int8, per channel (ONNX Runtime)"})
    return meta


class OnnxPieces:
    """The pieces run in ONNX Runtime: embeddings, the trunk to the deepest split a batch needs, then each task's
    branch and head on its own rows."""

    def __init__(self, root: Path, meta: Optional[dict] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        meta = meta or json.loads((Path(root) / "pieces.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1

        def session(name: str):
            s = ort.InferenceSession(str(Path(root) / name), options, providers=["CPUExecutionProvider"])
            return s, [i.name for i in s.get_inputs()]  # an input a piece does not read is not in its graph
        self.embed = session("embed.onnx")
        self.segments = [(a, b, session(f"trunk_{a}_{b}.onnx")) for a, b in meta["segments"]]
        self.tasks = {t: (info["split"], session(info["file"])) for t, info in meta["tasks"].items()}

    @staticmethod
    def _run(piece, feed: dict) -> np.ndarray:
        sess, names = piece
        return sess.run(None, {k: feed[k] for k in names})[0]

    def run(self, input_ids, attention_mask, token_type_ids, tasks: list[str],
            rows: Optional[dict[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        hidden = self._run(self.embed, {"input_ids": input_ids, "attention_mask": attention_mask,
                                        "token_type_ids": token_type_ids})
        needed = {self.tasks[t][0] for t in tasks}
        states = {0: hidden}
        for a, b, seg in self.segments:
            if a >= max(needed):
                break
            hidden = self._run(seg, {"hidden": hidden, "attention_mask": attention_mask})
            states[b] = hidden
        out = {}
        for t in tasks:
            split, piece = self.tasks[t]
            h, m = states[split], attention_mask
            if rows is not None and t in rows:
                h, m = h[rows[t]], m[rows[t]]
            out[t] = self._run(piece, {"hidden": h, "attention_mask": m})
        return out
