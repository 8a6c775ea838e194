"""One task as a standard Hugging Face model directory (``save_pretrained``: config, safetensors, tokenizer):
the trunk's layers below the task's split, then its branch, as one encoder of the same family.

Where the task's head is exactly a transformers class — a classifier over BERT's pretrained pooler
(``*ForSequenceClassification``), or a tagging head (``*ForTokenClassification``, for the families whose token
classifier is a linear layer per token) — that class is exported with ``id2label``/``label2id``, so
``transformers.pipeline`` gives manytask's labels and probabilities. Otherwise the encoder is exported
(``AutoModel`` loads it) beside the head's weights and a short loader (README.md in the directory).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from manytask.export.source import ExportError, source_model
from manytask.io import atomic_write_text
from manytask.kinds import kind_of

LOADER = """# {task}: a manytask {kind} task, as a transformers encoder and its head

```python
import json, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

d = "{dir}"
meta = json.load(open(f"{{d}}/manytask_head.json"))
encoder, tok = AutoModel.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)
w = load_file(f"{{d}}/manytask_head.safetensors")
x = tok(["A gem of a film."], return_tensors="pt", padding=True, truncation=True, max_length=meta["max_seq_length"])
with torch.no_grad():
    h = encoder(**x).last_hidden_state
m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
pooled = (h * m).sum(1) / m.sum(1) if meta["pooling"] == "mean" else h[:, 0]
logits = pooled @ w["out.weight"].T + w["out.bias"]
# classification: logits.softmax(-1) over meta["labels"]; regression: lo + sigmoid(logits) * (hi - lo) with
# (lo, hi) = meta["label_range"]; multilabel: logits.sigmoid() >= 0.5 per label; tagging: h @ w["out.weight"].T + ...
```
"""


def _encoder_state(model, task: str) -> tuple[dict, int]:
    """The task's encoder weights: the trunk's layers below the split, then the branch's, renumbered."""
    adapter = model.adapter
    prefix = adapter.layers_path + "."
    split, branch = model.split_depth[task], model.branches[task] if task in model.branches else []
    state = {}
    for k, v in model.encoder.state_dict().items():
        if k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) >= split:
            continue
        state[k] = v
    for i, layer in enumerate(branch):
        for k, v in layer.state_dict().items():
            state[f"{prefix}{split + i}.{k}"] = v
    return state, split + len(branch)


def export_hf(source: Path, task: str, out: Path) -> dict:
    model, tokenizer, max_len = source_model(source, task)
    spec, kind, adapter = model.specs[task], kind_of(model.specs[task]), model.adapter
    if model.head_type(task) != "linear":
        raise ExportError(f"task {task!r}: a {model.head_type(task)} head has no transformers equivalent; export it "
                          "with --format onnx")
    state, depth = _encoder_state(model, task)
    config = copy.deepcopy(model.config)
    adapter.set_depth(config, depth)
    head = {k: v.detach().clone().contiguous() for k, v in model.heads[task].state_dict().items()}
    model_type = config.model_type
    labels = spec.labels or []
    pooler = model.pooling == "pooler"
    if kind.class_labels and pooler and model_type in adapter.sequence_classifier_exact:
        made, form = _with_head(AutoModelForSequenceClassification, config, labels, state, head, "classifier")
    elif kind.word_level and adapter.token_classifier_exact and labels:
        made, form = _with_head(AutoModelForTokenClassification, config, labels, state, head, "classifier")
    else:
        made = AutoModel.from_config(config, **adapter.model_kwargs(pooler))
        _load_exactly(made, state)
        form = "encoder+head"
    out.mkdir(parents=True, exist_ok=True)
    made.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    meta = {"task": task, "kind": spec.kind, "labels": spec.labels, "label_range": spec.label_range,
            "pooling": model.pooling, "max_seq_length": max_len, "form": form, "layers": depth,
            "transformers_class": type(made).__name__}
    if form == "encoder+head":
        save_file(head, str(out / "manytask_head.safetensors"))
        atomic_write_text(out / "README.md", LOADER.format(task=task, kind=spec.kind, dir=out))
    (out / "manytask_head.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _load_exactly(model: torch.nn.Module, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ExportError(f"exported weights do not fit {type(model).__name__} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")


def _with_head(auto, config, labels: list[str], state: dict, head: dict, classifier: str):
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {lab: i for i, lab in enumerate(labels)}
    made = auto.from_config(config)
    prefix = made.base_model_prefix
    keys = set(made.state_dict())
    full = {f"{prefix}.{k}": v for k, v in state.items() if f"{prefix}.{k}" in keys or not k.startswith("pooler.")}
    full.update({f"{classifier}.{k[len('out.'):]}": v for k, v in head.items()})
    _load_exactly(made, full)
    return made, type(made).__name__
