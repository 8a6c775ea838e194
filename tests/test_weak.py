"""Weak supervision: labeling functions, Snorkel's label model, the LF analysis, and a student trained on
the probabilistic labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from manytask.cli import app
from manytask.config import load_config
from manytask.data.readers import Example
from manytask.data.target_store import TeacherTargets
from manytask.metal.weak import LabelingFunction, WeakError, analysis, apply
from manytask.runs import train_run
from manytask.tasks import glue_task

pytest.importorskip("snorkel")
runner = CliRunner()
SST2 = glue_task("sst2")
LFS = [LabelingFunction(name="positive_words", kind="contains_any", words=["good", "great", "lovely"], label="1"),
       LabelingFunction(name="negative_words", kind="contains_any", words=["bad", "awful", "grim"], label="0"),
       LabelingFunction(name="fine", kind="function", function="tests.weak_stub:fine_is_positive")]


def test_votes_by_hand_and_the_analysis():
    ex = [Example(f"sst2/u/{i}", t, None, None, str(i)) for i, t in enumerate(
        ["good fine day", "awful grim", "good but bad", "nothing here"])]
    L = apply(LFS, SST2, ex)
    assert L.tolist() == [[1, -1, 1], [-1, 0, -1], [1, 0, -1], [-1, -1, -1]]
    rows = analysis(L, [f.name for f in LFS], np.array([1, 0, 0, 0]))
    first = rows[0]
    assert first["coverage"] == 0.5 and first["overlaps"] == 0.5 and first["conflicts"] == 0.25
    assert (first["correct"], first["incorrect"], first["accuracy"]) == (1, 1, 0.5)
    assert rows[1]["accuracy"] == 1.0 and rows[2]["coverage"] == 0.25


def test_a_vote_outside_the_label_space_names_the_function_and_example():
    bad = LabelingFunction(name="maybe", kind="function", function="tests.weak_stub:votes_maybe")
    with pytest.raises(WeakError, match=r"labeling function 'maybe' voted 'maybe' on example sst2/u/1"):
        apply([bad], SST2, [Example("sst2/u/0", "good", None, None, "0"), Example("sst2/u/1", "dull", None, None, "1")])
    with pytest.raises(WeakError, match="give the 'label'"):
        apply([LabelingFunction(name="x", kind="regex", pattern="a")], SST2, [Example("a", "a", None, None, "1")])


def test_weak_labels_become_a_target_store_a_student_trains_on(mini_glue, tiny_config, tmp_path):
    rows = "".join(f"{t}\n" for t in ["good fine lovely", "awful grim cold", "great warm", "bad dull", "fine day",
                                      "grim awful bad", "lovely good", "poor bad"] * 4)
    (tmp_path / "u.tsv").write_text("sentence\n" + rows)
    cfg = {"task": "sst2", "unlabeled": str(tmp_path / "u.tsv"),
           "functions": [f.model_dump(exclude_none=True) for f in LFS], "label_model": {"epochs": 100}}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["weak", "-c", str(tmp_path / "w.yaml"), "-o", str(tmp_path / "weak")])
    assert res.exit_code == 0, res.output
    assert "label model accuracy" in res.output and "| positive_words |" in res.output
    report = json.loads((tmp_path / "weak" / "weak.json").read_text())
    assert report["examples"] == 32 and report["gold"]["split"] == "dev"
    assert 0.0 <= report["gold"]["label_model_accuracy"] <= 1.0
    targets = TeacherTargets.load(tmp_path / "weak" / "targets" / "sst2.safetensors")
    assert targets.ids[:2] == ["sst2/train/0", "sst2/train/1"] and targets.logits.shape == (32, 2)
    probs = np.exp(targets.logits)
    assert probs[0].argmax() == 1 and probs[1].argmax() == 0  # "good fine lovely" positive, "awful grim" negative
    first = json.loads((tmp_path / "weak" / "train.jsonl").read_text().splitlines()[0])
    assert first == {"id": "0", "label": "1", "sentence": "good fine lovely"}
    student = {**tiny_config, "tasks": [report["student_entry"]],
               "distill": {"targets": str(tmp_path / "weak" / "targets"), "schedule": "constant", "lam": 0.0},
               "train": {**tiny_config["train"], "steps": 4, "eval_every": None}}
    summary = train_run(load_config(data=student), tmp_path / "student")
    assert summary["final"]["tasks"]["sst2"]["dev"]["n"] == 40  # scored on the task's own dev set
