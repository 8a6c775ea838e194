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
                                      "grim awful bad", "lovely good", "poor bad", "warm cold"] * 4)
    (tmp_path / "u.tsv").write_text("sentence\n" + rows)
    cfg = {"task": "sst2", "unlabeled": str(tmp_path / "u.tsv"),
           "functions": [f.model_dump(exclude_none=True) for f in LFS], "label_model": {"epochs": 100}}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["weak", "-c", str(tmp_path / "w.yaml"), "-o", str(tmp_path / "weak")])
    assert res.exit_code == 0, res.output
    assert "rows both predict" in res.output and "| positive_words |" in res.output
    report = json.loads((tmp_path / "weak" / "weak.json").read_text())
    assert report["examples"] == 36 and report["gold"]["split"] == "dev"
    # "warm cold" has no vote: it is dropped, not trained on with the first label
    assert (report["kept"], report["dropped"]) == (32, 4) and "4 dropped" in res.output
    assert 0.0 <= report["gold"]["label_model"]["accuracy"] <= 1.0
    targets = TeacherTargets.load(tmp_path / "weak" / "targets" / "sst2.safetensors")
    assert targets.ids[:2] == ["sst2/train/0", "sst2/train/1"] and targets.logits.shape == (32, 2)
    assert "sst2/train/8" not in targets.ids and "sst2/train/9" in targets.ids  # ids stay those of the file
    train = [json.loads(l) for l in (tmp_path / "weak" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 32 and not any(r["sentence"] == "warm cold" for r in train)
    probs = np.exp(targets.logits)
    assert probs[0].argmax() == 1 and probs[1].argmax() == 0  # "good fine lovely" positive, "awful grim" negative
    first = json.loads((tmp_path / "weak" / "train.jsonl").read_text().splitlines()[0])
    assert first == {"id": "0", "label": "1", "sentence": "good fine lovely"}
    student = {**tiny_config, "tasks": [report["student_entry"]],
               "distill": {"targets": str(tmp_path / "weak" / "targets"), "schedule": "constant", "lam": 0.0},
               "train": {**tiny_config["train"], "steps": 4, "eval_every": None}}
    summary = train_run(load_config(data=student), tmp_path / "student")
    assert summary["final"]["tasks"]["sst2"]["dev"]["n"] == 40  # scored on the task's own dev set


def test_label_model_and_majority_vote_are_scored_on_the_same_rows_as_snorkel_scores_them():
    """Hand-made votes with ties and uncovered rows: each method's accuracy on its own rows is Snorkel's own
    ``score`` (ties abstain), and the comparison is made on the rows both predict."""
    from snorkel.labeling.model import LabelModel, MajorityLabelVoter

    from manytask.metal.weak import compare_on_gold

    L = np.array([[1, 1, -1], [0, 0, 0], [1, 0, -1], [-1, -1, -1], [0, -1, 1], [1, -1, -1], [0, 0, 1], [1, 1, 1]] * 5)
    gold = np.array([1, 0, 1, 0, 1, 1, 0, 1] * 5)
    model = LabelModel(cardinality=2, verbose=False)
    model.fit(L, n_epochs=200, seed=0, progress_bar=False)
    result = compare_on_gold(L, gold, model)
    assert result["label_model"]["accuracy"] == pytest.approx(model.score(L, gold, tie_break_policy="abstain")["accuracy"])
    voter = MajorityLabelVoter(cardinality=2)
    assert result["majority_vote"]["accuracy"] == pytest.approx(voter.score(L, gold, tie_break_policy="abstain")["accuracy"])
    # majority vote abstains on the ties (rows 2, 4) and the uncovered row 3: it predicts 5 of 8 rows, all right
    assert result["majority_vote"]["coverage"] == pytest.approx(5 / 8) and result["majority_vote"]["accuracy"] == 1.0
    mv = voter.predict(L, tie_break_policy="abstain")
    lm = model.predict(L, tie_break_policy="abstain")
    both = (mv != -1) & (lm != -1)
    assert result["shared_rows"] == both.sum()
    assert result["label_model"]["accuracy_shared"] == pytest.approx((lm[both] == gold[both]).mean())
    assert result["winner"] in ("label model", "majority vote", None)


def test_too_few_functions_and_nothing_covered_are_one_line_errors(tmp_path):
    (tmp_path / "u.tsv").write_text("sentence\nplain words\nother words\n")
    from manytask.metal.weak import WeakConfig, run_weak

    two = WeakConfig(task="sst2", unlabeled=str(tmp_path / "u.tsv"), gold=None,
                     functions=[f.model_dump(exclude_none=True) for f in LFS[:2]])
    with pytest.raises(WeakError, match="at least 3 labeling functions .got 2"):
        run_weak(two, tmp_path / "w", tmp_path)
    three = two.model_copy(update={"functions": LFS})
    with pytest.raises(WeakError, match="every labeling function abstained"):
        run_weak(three, tmp_path / "w", tmp_path)
