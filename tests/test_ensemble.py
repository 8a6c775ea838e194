"""Ensembles: combining members by hand, the command, and members that cannot be combined."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from manytask.cli import app as cli_app
from manytask.config import load_config
from manytask.evaluation.scoring import Predictions
from manytask.metal.ensemble import Ensemble, EnsembleError, combine
from manytask.runs import Run, train_run
from manytask.tasks import glue_task

runner = CliRunner()
SST2, STSB = glue_task("sst2"), glue_task("stsb")


def _p(probs):
    probs = np.asarray(probs, dtype=float)
    return Predictions(["a", "b"], probs.argmax(-1), probs)


def test_combining_by_hand():
    members = [_p([[0.9, 0.1], [0.4, 0.6]]), _p([[0.2, 0.8], [0.45, 0.55]]), _p([[0.3, 0.7], [0.9, 0.1]])]
    mean = combine(SST2, members, "mean", [1, 1, 1])
    assert mean.probs == pytest.approx(np.array([[1.4, 1.6], [1.75, 1.25]]) / 3)
    assert mean.values.tolist() == [1, 0]
    vote = combine(SST2, members, "vote", [1, 1, 1])
    assert vote.values.tolist() == [1, 1]  # two of three members say 1 on both
    tie = combine(SST2, members[:2], "vote", [1, 1])  # one vote each on "a": the higher mean probability wins
    assert tie.values.tolist()[0] == 0  # mean probabilities [0.55, 0.45]
    weighted = combine(SST2, members[:2], "weighted", [3, 1])
    assert weighted.probs[0] == pytest.approx([0.75 * 0.9 + 0.25 * 0.2, 0.75 * 0.1 + 0.25 * 0.8])
    scores = [Predictions(["a"], np.array([1.0]), None), Predictions(["a"], np.array([3.0]), None)]
    assert combine(STSB, scores, "vote", [1, 1]).values.tolist() == [2.0]
    assert combine(STSB, scores, "weighted", [1, 3]).values.tolist() == [2.5]


def test_mcnemar_exact_by_hand():
    from manytask.evaluation.stats import mcnemar_exact

    # 10 examples where only a is right, 2 where only b is, 5 both, 3 neither:
    # two-sided exact binomial p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    assert mcnemar_exact(a, b) == (10, 2, pytest.approx(2 * 79 / 4096))
    assert mcnemar_exact(b, a)[:2] == (2, 10)
    only_agreement = mcnemar_exact([True, False], [True, False])
    assert only_agreement[:2] == (0, 0) and np.isnan(only_agreement[2])
    with pytest.raises(ValueError, match="same examples"):
        mcnemar_exact([True], [True, False])


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    from tests.conftest import TINY, write_mini_glue

    base = tmp_path_factory.mktemp("ens")
    glue = write_mini_glue(base / "glue")
    runs = []
    for seed in (1, 2, 3):
        cfg = {"seed": seed, "glue_dir": str(glue), "tasks": ["sst2", "stsb"], "model": dict(TINY),
               "train": {"batch_size": 8, "steps": 10, "lr": 1e-3, "progress": False}}
        train_run(load_config(data=cfg), base / f"m{seed}")
        runs.append(base / f"m{seed}")
    return base, glue, runs


def test_the_ensemble_scores_the_mean_of_its_members(members, tmp_path):
    base, glue, runs = members
    res = runner.invoke(cli_app,
                        ["ensemble", *map(str, runs), "--task", "sst2", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert sum(l.startswith("member ") for l in res.output.splitlines()) == 3 and "ensemble (mean)" in res.output
    ens = Ensemble(tmp_path / "e")
    from manytask.data.loading import load_tasks

    data = next(d for d in load_tasks(Run.open(runs[0]).cfg, with_train=False)[0] if d.name == "sst2")
    probs = np.mean([Run.open(r).predict_examples(data.spec, data.evals["dev"]).probs for r in runs], axis=0)
    gold = np.array([e.label for e in data.evals["dev"]])
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert saved["primary"]["sst2"] == pytest.approx(float((probs.argmax(-1) == gold).mean()))
    assert set(saved["members"]) == {str(Run.open(r).path) for r in runs}
    # the ensemble against each member, example by example (McNemar), Holm over the members
    for r in runs:
        mine = Run.open(r).predict_examples(data.spec, data.evals["dev"]).values == gold
        v = saved["versus_members"][str(Run.open(r).path)]["dev"]
        ens_ok = probs.argmax(-1) == gold
        assert v["only_ensemble_right"] == int((ens_ok & ~mine).sum())
        assert v["only_member_right"] == int((~ens_ok & mine).sum())
        assert v["accuracy_diff"] == pytest.approx(100 * (ens_ok.mean() - mine.mean()))
        assert np.isnan(v["p"]) or v["p_holm"] >= v["p"]
    assert "McNemar exact p=" in res.output or all(
        np.isnan(v["dev"]["p"]) for v in saved["versus_members"].values())
    # predict and submit take the ensemble like a run
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"sentence": "good fine"}\n')

    res = runner.invoke(cli_app, ["predict", str(tmp_path / "e"), "--task", "sst2", "-i", str(inp), "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "p.jsonl").read_text())["probabilities"]["1"]
    from manytask.data.readers import Example

    want = np.mean([Run.open(r).predict_examples(data.spec, [Example("x", "good fine", None, None, "1")]).probs[0][1]
                    for r in runs])
    assert got == pytest.approx(want, abs=1e-5)
    res = runner.invoke(cli_app, ["submit", str(tmp_path / "e"), "--out", str(tmp_path / "sub")])
    assert res.exit_code == 0 and (tmp_path / "sub" / "SST-2.tsv").exists(), res.output
    assert ens.mode == "mean" and len(ens.members) == 3


def test_members_that_disagree_are_refused(members, tmp_path):
    from tests.conftest import TINY

    base, glue, runs = members
    other = {"seed": 1, "glue_dir": str(glue), "tasks": [{"name": "sst2", "max_eval": 20}], "model": dict(TINY),
             "train": {"batch_size": 8, "steps": 2, "progress": False}}
    train_run(load_config(data=other), tmp_path / "capped")
    with pytest.raises(EnsembleError, match="evaluation examples for 'sst2' differ"):
        Ensemble.create([runs[0], tmp_path / "capped"], "sst2", tmp_path / "e1")
    with pytest.raises(EnsembleError, match="has no task 'mrpc'"):
        Ensemble.create(runs[:2], "mrpc", tmp_path / "e2")
    with pytest.raises(EnsembleError, match="two or more"):
        Ensemble.create(runs[:1], "sst2", tmp_path / "e3")
    with pytest.raises(EnsembleError, match="mode 'median'"):
        Ensemble.create(runs[:2], "sst2", tmp_path / "e4", "median")
    (tmp_path / "labels.csv").write_text("sentence,label\n" + "".join(f"good {i},{'pos' if i % 2 else 'neg'}\n"
                                                                     for i in range(16)))
    user = {"seed": 1, "tasks": [{"name": "sst2x", "kind": "classification", "train": str(tmp_path / "labels.csv"),
                                  "dev": str(tmp_path / "labels.csv"), "text_fields": ["sentence"],
                                  "label_field": "label", "labels": ["neg", "pos"]}],
            "model": dict(TINY), "train": {"batch_size": 8, "steps": 2, "progress": False}}
    train_run(load_config(data=user), tmp_path / "u1")
    user["tasks"][0]["labels"] = ["pos", "neg"]
    train_run(load_config(data=user), tmp_path / "u2")
    with pytest.raises(EnsembleError, match="labels"):
        Ensemble.create([tmp_path / "u1", tmp_path / "u2"], "sst2x", tmp_path / "e5")


def test_members_on_resplits_are_scored_on_their_own_part_and_ensembled_on_dev(members, tmp_path):
    from tests.conftest import TINY

    base, glue, _ = members
    cfg = {"seed": 1, "glue_dir": str(glue), "tasks": ["sst2"], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 4, "progress": False}}
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(cfg))
    res = runner.invoke(cli_app, ["ensemble-members", "-c", str(tmp_path / "c.yaml"), "--task", "sst2", "--k", "3",
                                  "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    held = [json.loads((tmp_path / "m" / f"member-{i}" / "data.json").read_text())["tasks"]["sst2"] for i in range(3)]
    assert all(set(h["eval"]) == {"train_heldout", "dev"} for h in held)
    ids = [set(Run.open(tmp_path / "m" / f"member-{i}").cfg.tasks[0].resplit.model_dump().items()) for i in range(3)]
    assert len({frozenset(i) for i in ids}) == 3  # three different re-splits
    saved = json.loads((tmp_path / "m" / "ensemble" / "eval.json").read_text())
    assert list(saved["titles"]["sst2"]) == ["dev"]  # the ensemble is scored on the shared, official dev set
    assert all("train_heldout" in v for v in saved["members_heldout"].values())
    assert res.output.count("own held-out") == 3


def test_weighted_ensembles_take_held_out_weights_or_say_the_score_is_optimistic(members, tmp_path):
    """Weights from the dev set the ensemble is scored on make its score optimistic: members trained on
    re-splits are weighted by their own held-out parts instead; others are flagged."""
    from tests.conftest import TINY

    base, glue, runs = members
    res = runner.invoke(cli_app, ["ensemble", *map(str, runs), "--task", "sst2", "--out", str(tmp_path / "w"),
                                  "--mode", "weighted"])
    assert res.exit_code == 0 and "optimistic" in res.output, res.output
    meta = json.loads((tmp_path / "w" / "ensemble.json").read_text())
    assert meta["weights_from"] == "dev" and json.loads((tmp_path / "w" / "eval.json").read_text())["optimistic"]
    assert [m["weight"] for m in meta["members"]] == pytest.approx([max(m["dev_primary"], 1e-6) for m in meta["members"]])
    cfg = {"seed": 1, "glue_dir": str(glue), "tasks": ["sst2"], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 4, "progress": False}}
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(cfg))
    res = runner.invoke(cli_app, ["ensemble-members", "-c", str(tmp_path / "c.yaml"), "--task", "sst2", "--k", "2",
                                  "--out", str(tmp_path / "m"), "--mode", "weighted"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m" / "ensemble" / "ensemble.json").read_text())
    assert meta["weights_from"] == "held-out"
    assert [m["weight"] for m in meta["members"]] == pytest.approx(
        [max(m["heldout_primary"], 1e-6) for m in meta["members"]])
    assert not json.loads((tmp_path / "m" / "ensemble" / "eval.json").read_text())["optimistic"]
