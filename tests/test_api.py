"""The public Python API as a notebook uses it: train from a dict with overrides, scores that write nothing,
a model loaded once that predicts on lists of strings and pairs, a bundle written and read back."""

from __future__ import annotations

import pytest

import manytask as mt


@pytest.fixture
def trained(mini_glue, tiny_config, tmp_path):
    tiny_config["tasks"] = ["sst2", "cola", "mrpc", "stsb"]
    return mt.train(tiny_config, out=tmp_path / "run", overrides={"train.steps": 4, "train.eval_every": None})


def test_train_scores_and_predict(trained, tmp_path):
    run = trained
    assert isinstance(run, mt.Run) and run.cfg.train.steps == 4  # the override took
    scores = run.scores()
    assert isinstance(scores, mt.Scores) and scores.checkpoint == "last"
    assert set(scores.primary) == {"sst2", "cola", "mrpc", "stsb"} and scores.average == pytest.approx(
        sum(scores.primary.values()) / 4)
    assert not (tmp_path / "run" / "eval.json").exists()  # scores() writes nothing unless asked
    run.scores(write=True)
    assert (tmp_path / "run" / "eval.json").exists()
    model = run.model()
    assert run.model() is model  # loaded once, cached
    single = model.predict(["A gem of a film.", "Dull."], task="sst2")
    assert [p.task for p in single] == ["sst2", "sst2"] and single[0].label in ("0", "1")
    assert sum(single[0].probs.values()) == pytest.approx(1.0, abs=1e-5)
    pairs = model.predict([("A man plays.", "Someone plays.")])
    assert set(pairs[0]) == {"mrpc", "stsb"}  # every pair task
    assert isinstance(pairs[0]["stsb"].score, float) and 0.0 <= pairs[0]["stsb"].score <= 5.0
    every = model.predict(["A gem of a film."])
    assert set(every[0]) == {"cola", "sst2"}


def test_bundles_round_trip_and_model_scores(trained, tmp_path):
    model = trained.model()
    bundle = model.to_bundle(tmp_path / "bundle")
    again = mt.Bundle(bundle.root).model().predict(["A gem of a film."], task="sst2")[0]
    want = model.predict(["A gem of a film."], task="sst2")[0]
    assert again.label == want.label and again.probs == pytest.approx(want.probs, abs=1e-6)
    scored = model.scores(trained.cfg)  # the same model scored on the config's dev data: the run's own scores
    assert scored.primary == pytest.approx(trained.scores().primary, abs=1e-9)


def test_the_api_refuses_bad_input_with_one_error(trained):
    model = trained.model()
    with pytest.raises(mt.ManytaskError, match="unknown task"):
        model.predict(["x"], task="nope")
    with pytest.raises(mt.ManytaskError, match="mix single texts"):
        model.predict(["x", ("a", "b")])
    with pytest.raises(mt.ManytaskError, match="read text pairs"):
        model.predict(["x"], task="mrpc")
    with pytest.raises(mt.ManytaskError, match="a list of inputs"):
        model.predict("just a string")
    with pytest.raises(mt.ManytaskError, match="train.nope"):
        mt.load_config({"tasks": ["sst2"], "train": {"nope": 1}})
    with pytest.raises(mt.ManytaskError, match="not a manytask run"):
        mt.Run.open(trained.path / "checkpoints")
