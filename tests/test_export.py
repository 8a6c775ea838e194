"""Export: a task as a transformers model directory (``hf``) that AutoModel and pipeline load, and a task or a
whole bundle as ONNX run by ONNX Runtime; every format's outputs equal manytask's own."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, pipeline
from typer.testing import CliRunner

import manytask as mt
from manytask.cli import app
from manytask.models.multitask import MultiTaskModel
from manytask.tasks import glue_task
from tests.tiny_encoders import ARCHITECTURES, save_tiny

TEXTS = ["a good film and a warm one", "dull", "the plot makes no sense at all"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return {a: save_tiny(a, root) for a in ARCHITECTURES}


def _bundle(path, tmp, pooling="mean", tasks=("sst2", "stsb")):
    hf = AutoModel.from_pretrained(str(path), **({"add_pooling_layer": True} if pooling == "pooler" else {}))
    model = MultiTaskModel(hf, [glue_task(t) for t in tasks], {tasks[0]: 1}, pooling=pooling).eval()
    with torch.no_grad():  # the branch differs from the trunk's top layer it started from
        for p in model.branches[tasks[0]].parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_api = mt.Model(model, AutoTokenizer.from_pretrained(str(path)), 32)
    return model_api, model_api.to_bundle(tmp / "bundle")


def _logits(model_api, task, texts=TEXTS):
    from manytask.inference import tokenize

    batch = tokenize(model_api.tokenizer, texts, None, 32)
    with torch.no_grad():
        return model_api.net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[task])[task].logits


def _run_loader(directory, texts):
    """The loader README.md documents, run as written (its code block), on other texts."""
    code = re.search(r"```python\n(.*?)```", (directory / "README.md").read_text(), re.S).group(1)
    code = code.replace('["A gem of a film."]', repr(texts))
    scope: dict = {}
    exec(code, scope)
    return scope["logits"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_exports_to_transformers_and_onnx_with_manytasks_outputs(encoders, arch, tmp_path):
    model_api, bundle = _bundle(encoders[arch], tmp_path)
    meta = mt.export_model(bundle.root, tmp_path / "hf", "hf", "sst2")
    assert meta["form"] == "encoder+head" and meta["layers"] == 3
    assert type(AutoModel.from_pretrained(str(tmp_path / "hf"))).__name__ == meta["transformers_class"]
    got = _run_loader(tmp_path / "hf", TEXTS)
    assert torch.allclose(got, _logits(model_api, "sst2"), atol=1e-5)
    import onnxruntime as ort

    onnx = mt.export_model(bundle.root, tmp_path / "onnx", "onnx")  # the whole bundle: the trunk once
    assert onnx["tasks"] == ["sst2", "stsb"] and onnx["check"]["max_abs_difference"] <= onnx["check"]["tolerance"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "onnx"))
    feed = tok(TEXTS, padding=True, return_tensors="np", return_token_type_ids=True)
    outs = session.run(None, {i.name: feed[i.name].astype(np.int64) for i in session.get_inputs()})
    for task, out in zip(onnx["tasks"], outs):
        assert np.allclose(out, _logits(model_api, task).numpy(), atol=1e-4), task


def test_a_pooler_classifier_exports_as_bert_for_sequence_classification(encoders, tmp_path):
    model_api, bundle = _bundle(encoders["bert"], tmp_path, pooling="pooler")
    meta = mt.export_model(bundle.root, tmp_path / "hf", "hf", "sst2")
    assert meta["form"] == "BertForSequenceClassification"
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None)
    for text, want in zip(TEXTS, model_api.predict(TEXTS, task="sst2")):
        out = classify(text)
        got = {r["label"]: r["score"] for r in (out[0] if isinstance(out[0], list) else out)}
        assert got == pytest.approx(want.probs, abs=1e-5)


def test_a_tagging_task_exports_as_token_classification(mini_glue, tmp_path):
    rows = [{"tokens": ["anna", "went", "to", "paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["bob", "saw", "rome"], "tags": ["B-PER", "O", "B-LOC"]}] * 8
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from tests.conftest import TINY

    cfg = {"tasks": [{"name": "ner", "kind": "tagging", "train": str(tmp_path / "t.jsonl"),
                      "dev": str(tmp_path / "t.jsonl")}], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 6, "lr": 1e-2, "progress": False}}
    run = mt.train(cfg, tmp_path / "run")
    meta = mt.export_model(run.path, tmp_path / "hf", "hf", "ner")
    assert meta["form"] == "BertForTokenClassification"
    tag = pipeline("token-classification", model=str(tmp_path / "hf"), aggregation_strategy="first")
    want = run.model().predict(["anna went to paris"], task="ner")[0]
    got = tag("anna went to paris")
    entities = {(g["word"], g["entity_group"]) for g in got}
    expected = {(w, t[2:]) for w, t in zip(want.tokens, want.tags) if t != "O"}
    assert entities == expected


def test_the_export_command_and_its_refusals(encoders, tmp_path):
    model_api, bundle = _bundle(encoders["bert"], tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(bundle.root), "--to", str(tmp_path / "o"), "--format", "onnx"])
    assert res.exit_code == 0 and "largest difference" in res.output, res.output
    res = runner.invoke(app, ["export", str(bundle.root), "--to", str(tmp_path / "h"), "--format", "hf"])
    assert res.exit_code == 2 and "name it with --task" in res.output
    res = runner.invoke(app, ["export", str(bundle.root), "--to", str(tmp_path / "x"), "--format", "tflite"])
    assert res.exit_code == 2 and "one of hf, onnx" in res.output
