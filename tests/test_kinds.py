"""The kinds' shared test, written once and run over every registered kind: a new kind (one file in
manytask/kinds/) is read, trained, distilled, scored, answered, bundled and served like the others, or this fails.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import manytask as mt
from manytask.config import load_config
from manytask.data.features import encode
from manytask.data.readers import DataError, read_split
from manytask.kinds import all_kinds, kind_names
from manytask.kinds.base import LabelError
from manytask.records import Example
from manytask.runs import train_run
from manytask.tasks import TaskSpec
from tests.conftest import TINY

KINDS = [k.name for k in all_kinds()]
WORDS = "good bad fine awful great poor lovely dull bright grim warm cold".split()


def test_the_registry_holds_the_built_in_kinds_and_the_multilabel_one():
    assert {"classification", "regression", "tagging", "multilabel"} <= set(kind_names())


def close(a, b, tol: float = 1e-5) -> bool:
    """Equal JSON-like values, floats within ``tol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= tol
    return a == b


def _rows(kind, example: dict, n: int, seed: int) -> list[dict]:
    """n JSONL rows of the kind's example (its labels repeated), each with its own text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        raw = example["raw"][i % len(example["raw"])]
        if kind.word_level:
            words = example["words"][i % len(example["words"])]
            rows.append({"tokens": words, "tags": raw})
        else:
            rows.append({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))), "label": raw})
    return rows


def _entry(kind, example: dict, tmp_path) -> dict:
    for split, n, seed in (("train", 24, 1), ("dev", 12, 2), ("test", 5, 3)):
        rows = _rows(kind, example, n, seed)
        if split == "test":
            rows = [{k: v for k, v in r.items() if k not in ("label", "tags")} for r in rows]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = {"name": "t", "kind": kind.name, "train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl"),
             "test": str(tmp_path / "test.jsonl"), **example["spec"]}
    if not kind.word_level:
        entry.update(text_fields=["text"], label_field="label")
    return entry


@pytest.fixture(params=KINDS)
def kind_run(request, tmp_path):
    kind = next(k for k in all_kinds() if k.name == request.param)
    example = kind.example()
    entry = _entry(kind, example, tmp_path)
    cfg = {"seed": 2, "tasks": [entry], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 4, "lr": 1e-3, "eval_every": None, "progress": False}}
    train_run(load_config(data=cfg), tmp_path / "run")
    return kind, example, cfg, tmp_path


def test_labels_are_read_checked_and_turned_into_targets(kind_run):
    kind, example, cfg, tmp_path = kind_run
    spec = mt.Run.open(tmp_path / "run").spec("t")
    for raw in example["raw"]:
        label = kind.parse_label(spec, raw)
        assert kind.target(spec, label) is not None
    with pytest.raises(LabelError):
        kind.parse_label(spec, example["bad"])
    strata = kind.strata(spec, [kind.parse_label(spec, r) for r in example["raw"]])
    assert len(strata) == len(example["raw"])
    # a bad label in a file names the file, the line and the field
    bad = _rows(kind, example, 2, 9)
    bad[1]["tags" if kind.word_level else "label"] = example["bad"]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    broken = TaskSpec.model_validate({**spec.model_dump(), "splits": {"dev": {"path": str(tmp_path / "bad.jsonl"),
                                                                              "role": "dev"}}})
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2, field"):
        read_split(broken, "dev", tmp_path)


def test_the_head_loss_and_distillation_losses_fit_the_kind(kind_run):
    kind, example, cfg, tmp_path = kind_run
    run = mt.Run.open(tmp_path / "run")
    spec, model = run.spec("t"), run.model_for("t", "last").train()
    examples = [Example(f"t/x/{i}", " ".join(w) if w else "good fine", None, kind.parse_label(spec, r), str(i),
                        words=w, tags=r if kind.word_level else None)
                for i, (r, w) in enumerate(zip(example["raw"], example.get("words") or [None] * len(example["raw"])))]
    feats = encode(examples, spec, run.tokenizer(), 32)
    inputs = mt.inference.tokenize_words(run.tokenizer(), [e.text_a for e in examples], 32) if kind.word_level else \
        mt.inference.tokenize(run.tokenizer(), [e.text_a for e in examples], None, 32)
    out = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=["t"])["t"]
    assert tuple(out.logits.shape) == kind.probe_shape(spec, len(examples), inputs["input_ids"].shape[1])
    from manytask.data.features import collate

    _, batches = collate({"t": (feats, list(range(len(examples))))}, run.tokenizer().pad_token_id)
    total, count = kind.loss(out.logits, batches["t"].labels), kind.count(batches["t"].labels)
    assert torch.isfinite(total) and count > 0
    total.backward()
    if kind.sliceable:
        assert kind.per_example_loss(out.logits, batches["t"].labels).shape == (len(examples),)
    if kind.distillable:
        teacher = out.logits.detach() + 0.5
        for term in (kind.soft_loss(out.logits, batches["t"].labels, teacher, 0.3, 2.0), kind.kd_loss(out.logits,
                                                                                                        teacher, 2.0)):
            assert torch.isfinite(term) and term.dim() == 0
        logits = [row for row in out.logits.detach()]
        assert kind.teacher_logits(logits).shape == (len(examples), spec.num_outputs)


def test_a_run_of_the_kind_is_scored_answered_filed_bundled_and_served(kind_run):
    kind, example, cfg, tmp_path = kind_run
    run = mt.Run.open(tmp_path / "run")
    spec = run.spec("t")
    scores = run.scores()
    dev = scores.tasks["t"]["dev"]
    assert set(spec.metrics) <= set(dev) and dev["n"] == 12 and not np.isnan(scores.primary["t"])
    texts = [" ".join(w) for w in example["words"][:3]] if kind.word_level else ["good fine day", "grim cold"]
    answers = run.model().predict(texts, task="t")
    assert len(answers) == len(texts) and all(a.task == "t" for a in answers)
    for a in answers:
        assert a.to_json() and isinstance(kind.cell(spec, a), str)
    # the same answers from the run's bundle, and from the server
    bundle = run.model().to_bundle(tmp_path / "bundle")
    again = mt.Bundle(bundle.root).model().predict(texts, task="t")
    assert close([a.to_json() for a in again], [a.to_json() for a in answers])
    from fastapi.testclient import TestClient

    with TestClient(mt.api.app(bundle.root)) as c:
        res = c.post("/v1/predict", json={"inputs": [{"text": t} for t in texts], "tasks": ["t"]})
    assert res.status_code == 200, res.text
    assert close([r["t"] for r in res.json()["results"]], [a.to_json() for a in answers])
    # prediction files (JSONL, and TSV or CoNLL) hold one prediction per record; the submission one line each
    n = run.predict_file("t", tmp_path / "test.jsonl", tmp_path / "p.jsonl")
    assert n == 5 and len((tmp_path / "p.jsonl").read_text().splitlines()) == 5
    run.predict_file("t", tmp_path / "test.jsonl", tmp_path / "p.tsv")
    assert (tmp_path / "p.tsv").read_text().strip()
    written, _ = run.submit(tmp_path / "sub")
    assert written == ["t.tsv"] and len((tmp_path / "sub" / "t.tsv").read_text().splitlines()) == 6


def test_a_distillable_kind_teaches_a_student_and_an_ensemblable_one_ensembles(kind_run):
    kind, example, cfg, tmp_path = kind_run
    run = mt.Run.open(tmp_path / "run")
    if kind.distillable:
        run.write_targets(tmp_path / "store", "last")
        student = {**cfg, "distill": {"targets": str(tmp_path / "store")}}
        summary = train_run(load_config(data=student), tmp_path / "student")
        assert "t" in summary["final"]["primary"]
    if kind.ensemblable:
        preds = run.predict_examples(run.spec("t"), read_split(run.spec("t"), "dev", tmp_path))
        both = kind.combine([preds, preds], "mean", np.array([0.5, 0.5]))
        assert np.array_equal(np.asarray(both.values), np.asarray(preds.values))
