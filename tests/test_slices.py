"""Slices (MeTaL, slice-based learning): slicing functions, per-slice scores, slice heads and SBL heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manytask.config import SliceFunction, SlicesConfig, load_config
from manytask.data.features import TaskBatch
from manytask.data.readers import Example
from manytask.data.slices import SliceError, membership
from manytask.models.multitask import TaskOutput
from manytask.runs import Run, train_run
from manytask.tasks import glue_task
from manytask.training.objectives import SliceHeadsObjective, value

EXAMPLES = [Example(f"t/dev/{i}", a, b, 0, str(i)) for i, (a, b) in enumerate([
    ("He said she would come, and they did!", None),
    ("A plain sentence", None),
    ("It rains; it pours: it is wet?!", "Is it wet"),
    ("good fine good", "grim"),
])]


def test_built_in_and_user_predicates():
    cfg = SlicesConfig(functions=[
        SliceFunction(name="pronouns", kind="count", pattern=r"(?i)\b(he|she|it|they|him|her|them)\b", n=2),
        SliceFunction(name="rare_punct", kind="regex", pattern=r"[;:?!]"),
        SliceFunction(name="weather", kind="contains_any", words=["rains", "WET"]),
        SliceFunction(name="short", kind="length", max=3, fields="text"),
        SliceFunction(name="good", kind="function", function="tests.slice_stub:has_good"),
    ])
    m = membership(cfg, EXAMPLES)
    assert m["pronouns"] == [True, False, True, False]
    assert m["rare_punct"] == [True, False, True, False]
    assert m["weather"] == [False, False, True, False]
    assert m["short"] == [False, True, False, True]
    assert m["good"] == [False, False, False, True]


def test_a_failing_function_names_the_slice_and_the_example():
    cfg = SlicesConfig(functions=[SliceFunction(name="boom", kind="function", function="tests.slice_stub:explodes",
                                                fields="text_pair")])
    with pytest.raises(SliceError, match=r"slice 'boom' failed on example t/dev/3: RuntimeError: cannot judge"):
        membership(cfg, EXAMPLES)
    with pytest.raises(Exception, match="needs 'pattern'"):
        SliceFunction(name="x", kind="regex")
    with pytest.raises(Exception, match="distinct names"):
        SlicesConfig(functions=[SliceFunction(name="a", kind="length", min=1)] * 2)


def test_slice_heads_learn_the_task_on_members_only():
    """A slice head is the task's kind with the labels of non-members masked out: the loss is the mean over the
    slice's members (zero when the batch has none), summed over slices."""
    objective = SliceHeadsObjective(glue_task("sst2"), ["a", "b"], 1.0)
    out = TaskOutput(torch.zeros(2, 2), slices={"a": torch.tensor([[0.0, 0.0], [5.0, -5.0]]),
                                                "b": torch.tensor([[0.0, 9.0], [0.0, 0.0]])})
    batch = TaskBatch(None, torch.arange(2), torch.tensor([1, 0]),
                      slices={"a": torch.tensor([True, False]), "b": torch.tensor([False, False])})
    assert value(objective, out, batch).item() == pytest.approx(np.log(2), abs=1e-6)  # member 0 of a; b empty


SLICES = {"functions": [{"name": "has_good", "kind": "contains_any", "words": ["good"]},
                        {"name": "long", "kind": "length", "min": 6},
                        {"name": "nothing", "kind": "regex", "pattern": "zzz"}]}


def _cfg(tiny_config, mode: str) -> dict:
    return {**tiny_config, "tasks": [{"name": "sst2", "slices": {**SLICES, "mode": mode}}, {"name": "stsb", "slices": {
        **SLICES, "mode": mode}}], "train": {**tiny_config["train"], "steps": 10, "eval_every": None}}


def test_every_score_has_its_slices(mini_glue, tiny_config, tmp_path):
    out = tmp_path / "r"
    train_run(load_config(data=_cfg(tiny_config, "eval")), out)
    result = Run.open(out).evaluate()
    slices = result["tasks"]["sst2"]["dev"]["slices"]
    assert slices["nothing"] == {"n": 0, "too_small": True}
    assert slices["has_good"]["n"] > 0 and slices["has_good"]["too_small"] == (slices["has_good"]["n"] < 30)
    # the slice's accuracy is the accuracy on its members, by hand from the model's own predictions
    from manytask.data.features import encode
    from manytask.data.loading import load_tasks
    from manytask.evaluation.scoring import predict

    run = Run.open(out)
    data = {d.name: d for d in load_tasks(run.cfg, with_train=False)[0]}
    sst2 = data["sst2"]
    feats = encode(sst2.evals["dev"], sst2.spec, run.tokenizer(), 32)
    preds = predict(run.model_for(), sst2.spec, feats, 16, run.tokenizer().pad_token_id)
    members = [i for i, e in enumerate(sst2.evals["dev"]) if "good" in e.text_a.split()]
    want = float(np.mean(np.asarray(feats.labels)[members] == preds.values[members]))
    assert slices["has_good"]["accuracy"] == pytest.approx(want) and slices["has_good"]["n"] == len(members)
    assert "pearson" in result["tasks"]["stsb"]["dev"]["slices"]["long"]
    saved = json.loads((out / "eval.json").read_text())
    assert saved["tasks"]["sst2"]["dev"]["slices"]["nothing"]["too_small"] is True


def test_slice_heads_learn_on_members_and_stay_out_of_bundles(mini_glue, tiny_config, tmp_path):
    from manytask.bundles import package_from_run

    out = tmp_path / "r"
    train_run(load_config(data=_cfg(tiny_config, "heads")), out)
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"log"' in l]
    assert any("sst2/slices" in e["loss"] for e in log)
    state = Run.open(out).model_for().state_dict()
    assert {tuple(k.split(".")[1:3]) for k in state if k.startswith("slice_heads.")} == {
        (t, s) for t in ("sst2", "stsb") for s in ("has_good", "long", "nothing")}
    pkg = package_from_run(out, "sst2", "last")
    assert not any("slice" in k for k in pkg.tensors)


def test_sbl_heads_train_predict_without_slicing_functions_and_are_served(mini_glue, tiny_config, tmp_path):
    from fastapi.testclient import TestClient

    from manytask import api
    from manytask.bundles import Bundle, package_from_run
    from manytask.serving.app import create_app
    from manytask.serving.predictor import MergedPredictor

    out = tmp_path / "r"
    train_run(load_config(data=_cfg(tiny_config, "sbl")), out)
    run = Run.open(out)
    model = run.model_for()
    head = model.heads["sst2"]
    assert type(head).__name__ == "SBLHead" and head.indicator.out_features == 4  # base + 3 slices
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"log"' in l]
    assert any("stsb/slices" in e["loss"] for e in log)
    bundle = Bundle.create(tmp_path / "bundle", model.share([]), run.tokenizer(), run.cfg.model.max_seq_length)
    for task in ("sst2", "stsb"):
        bundle.put(package_from_run(out, task, "last"))
    texts = ["good fine lovely", "awful dull grim cold"]
    want = [a.to_json() for a in api.Model(model, run.tokenizer(), 32).predict(texts, task="sst2")]
    with TestClient(create_app(MergedPredictor(bundle))) as c:
        res = c.post("/v1/predict", json={"inputs": [{"text": t} for t in texts], "tasks": ["sst2"]})
        assert res.status_code == 200, res.text
        for got, w in zip(res.json()["results"], want):
            assert got["sst2"]["probs"] == pytest.approx(w["probs"], abs=1e-5)


def test_a_study_recipe_trains_slice_heads_and_the_report_scores_each_slice(mini_glue, tmp_path):
    from manytask.distill.recipes import StudyConfig
    from manytask.distill.study import recipe_dir, run_study
    from manytask.report.bam import write_report
    from tests.conftest import TINY

    cfg = StudyConfig.model_validate({
        "name": "sliced", "seeds": [1], "tasks": [{"name": "sst2", "max_train": 24, "slices": SLICES}, "stsb"],
        "model": dict(TINY), "multi": {"batch_size": 8, "steps": 4, "progress": False},
        "recipes": [{"name": "Multi", "student": "multi"},
                    {"name": "Multi+slices", "student": "multi", "slice_mode": "heads"}],
        "baselines": ["Multi"]})
    out = tmp_path / "study"
    run_study(cfg, out)
    plain = Run.open(recipe_dir(out, 1, cfg.recipe("Multi")) / "run")
    sliced = Run.open(recipe_dir(out, 1, cfg.recipe("Multi+slices")) / "run")
    assert plain.cfg.tasks[0].slices.mode == "eval" and sliced.cfg.tasks[0].slices.mode == "heads"
    assert not any(k.startswith("slice_heads.") for k in plain.model_for().state_dict())
    assert any(k.startswith("slice_heads.sst2.") for k in sliced.model_for().state_dict())
    rep = write_report(out)
    rows = {(r["recipe"], r["slice"]): r for r in rep["slices"]}
    assert set(rows) == {(r, s) for r in ("Multi", "Multi+slices") for s in ("has_good", "long", "nothing")}
    scores = json.loads((recipe_dir(out, 1, cfg.recipe("Multi+slices")) / "scores.json").read_text())
    want = 100 * scores["tasks"]["sst2"]["dev"]["slices"]["has_good"]["accuracy"]
    assert rows[("Multi+slices", "has_good")]["median"] == pytest.approx(want)
    assert "## Slices" in rep["markdown"]


def test_metal_rte_slices_by_name():
    """MeTaL's RTE slices, shipped by name: more than one person-pronoun group in the premise; a dash or a
    semicolon anywhere in the pair. On RTE's dev set they hold 12 and 116 of 277 pairs."""
    cfg = SlicesConfig(functions=[SliceFunction(name="people", kind="builtin", builtin="metal_more_people"),
                                  SliceFunction(name="dash", kind="builtin", builtin="metal_dash_semicolon")])
    ex = [Example(f"t/dev/{i}", a, b, 0, str(i)) for i, (a, b) in enumerate([
        ("She told him the news.", "x"), ("He said his car broke.", "x"), ("I met you; it was fine.", "x"),
        ("A well-known fact", "plain"), ("Plain premise", "with a hypothesis; here")])]
    m = membership(cfg, ex)
    assert m["people"] == [True, False, True, False, False]  # she+him, only he/his, I+you
    assert m["dash"] == [False, False, True, True, True]
    with pytest.raises(SliceError, match="no built-in slicing function 'nope'"):
        membership(SlicesConfig(functions=[SliceFunction(name="x", kind="builtin", builtin="nope")]), ex)
    from tests.conftest import SHARED_GLUE

    if (SHARED_GLUE / "RTE" / "dev.tsv").exists():
        from manytask.data.readers import read_split

        spec = glue_task("rte")
        dev = read_split(spec, "dev", spec.split_root(SHARED_GLUE))
        counts = {k: sum(v) for k, v in membership(cfg, dev).items()}
        assert counts == {"people": 12, "dash": 116} and len(dev) == 277


def test_slice_based_learning_sums_a_batch_mean_loss_per_indicator_as_snorkel_does():
    """Two slices and the base slot: three indicator tasks, each the batch mean of its binary cross-entropy,
    added up (Snorkel's sum of tasks), plus each expert's loss on its members."""
    from manytask.models.multitask import SBLOutput
    from manytask.training.objectives import SliceBasedObjective

    def bce(logit, y):
        p = 1 / (1 + np.exp(-logit))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    indicator = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])  # 2 examples x (base, a, b)
    experts = torch.zeros(2, 3, 2)  # uniform expert predictions: loss ln 2 each
    members = {"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}
    batch = TaskBatch(None, torch.arange(2), torch.tensor([1, 0]), slices=members)
    out = TaskOutput(torch.zeros(2, 2), sbl=SBLOutput(indicator, experts))
    got = value(SliceBasedObjective(glue_task("sst2"), ["a", "b"], 1.0), out, batch).item()
    ind = [np.mean([bce(0.0, 1), bce(2.0, 1)]), np.mean([bce(1.0, 1), bce(0.0, 0)]),
           np.mean([bce(-1.0, 0), bce(0.5, 0)])]
    want = sum(ind) + np.log(2) + np.log(2) + 0.0  # experts: base (both), a (one member), b (none: zero)
    assert got == pytest.approx(want, abs=1e-5)


def test_an_sbl_expert_is_confident_in_the_positive_class_as_snorkel_takes_it():
    from manytask.kinds import get_kind

    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # expert 0 sure of class 0, expert 1 of class 1
    conf = get_kind("classification").expert_confidence(logits)
    assert conf[0, 0] < 0.5 < conf[0, 1]  # P(class 1), not max(P)
    three = get_kind("classification").expert_confidence(torch.tensor([[[3.0, 0.0, 0.0]]]))
    assert three[0, 0] == pytest.approx(torch.softmax(torch.tensor([3.0, 0.0, 0.0]), 0).max().item())


def test_slice_membership_is_judged_again_when_a_text_changes_under_its_id():
    cfg = SlicesConfig(functions=[SliceFunction(name="good", kind="contains_any", words=["good"])])
    assert membership(cfg, [Example("t/dev/1", "good day", None, 0, "1")])["good"] == [True]
    assert membership(cfg, [Example("t/dev/1", "bad day", None, 0, "1")])["good"] == [False]  # same id, new text
