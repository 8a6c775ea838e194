"""Serving precision: int8 weights (dynamic quantisation) and bf16, with each task's dev score under them,
cached in the bundle, shown by the API, and a precision that costs too much refused unless forced."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient

from manytask.bundles import Bundle, package_from_run
from manytask.serving.app import create_app
from manytask.serving.plan import score_precisions
from manytask.models.precision import cache_kind
from manytask.serving.precision import PrecisionError, compare, dev_scores
from manytask.serving.predictor import MergedPredictor
from tests.test_flex import TEXTS, other_run


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def _quantized(module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear  # and its 8-bit-activation subclass

    return any(isinstance(m, QLinear) for m in module.modules())


def test_int8_quantizes_trunk_and_branches_and_answers_close_to_fp32(flex_run, bundle):
    fp32, int8 = MergedPredictor(bundle), MergedPredictor(bundle, precision="int8")
    assert _quantized(int8.model.encoder.encoder) and not _quantized(fp32.model.encoder.encoder)
    assert all(_quantized(b) for b in int8.model.branches.values())
    assert not any(_quantized(h) for h in int8.model.heads.values())  # heads stay fp32
    a, b = fp32.predict(TEXTS, None, ["sst2"]), int8.predict(TEXTS, None, ["sst2"])
    for x, y in zip(a, b):
        assert y["sst2"]["probs"]["1"] == pytest.approx(x["sst2"]["probs"]["1"], abs=0.05)
    # a task swapped in while serving int8 is quantised too
    int8.put(package_from_run(other_run(flex_run, "sst2"), "sst2"))
    assert "sst2" not in int8.model.branches or _quantized(int8.model.branches["sst2"])


def test_dev_scores_per_precision_are_cached_and_served(mini_glue, bundle, monkeypatch):
    scores = score_precisions(bundle, "int8", mini_glue)
    assert set(scores) == {"fp32", "int8"} and set(scores["fp32"]) == {"sst2", "stsb", "mrpc"}
    assert scores["fp32"]["sst2"]["n"] == 24 and scores["fp32"]["stsb"]["metric"] == "spearman"
    cached = sorted(p.name for p in (bundle.root / "scores").iterdir())
    assert len(cached) == 6 and all(
        p.endswith((".fp32.cpu.json", f".int8.{cache_kind('int8', 'cpu')}.json")) for p in cached)
    import manytask.evaluation.scoring as predict_mod

    monkeypatch.setattr(predict_mod, "evaluate_features", lambda *a, **k: pytest.fail("should come from the cache"))
    assert dev_scores(bundle, bundle.merged_model(), "int8", mini_glue) == scores["int8"]
    with TestClient(create_app(MergedPredictor(bundle, precision="int8"), dev_scores=scores)) as c:
        tasks = {t["name"]: t for t in c.get("/v1/tasks").json()["tasks"]}
    assert tasks["sst2"]["dev"]["int8"]["score"] == scores["int8"]["sst2"]["score"]


def test_a_costly_precision_is_refused_unless_forced(mini_glue, bundle, monkeypatch):
    base = {"a": {"score": 0.80}, "b": {"score": 0.70}, "c": {"unscored": "no data"}}
    assert compare(base, {"a": {"score": 0.797}, "b": {"score": 0.69}}, 0.5) == ["b: 70.0 -> 69.0"]
    from manytask.serving.launch import checked_scores as _checked_scores

    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(mini_glue))
    with pytest.raises(PrecisionError, match="costs more than -1.0 points"):
        _checked_scores(bundle, "int8", -1.0, force=False)  # any task, even unchanged, "costs" more than -1
    assert set(_checked_scores(bundle, "int8", -1.0, force=True)) == {"fp32", "int8"}
    if not torch.cuda.is_available():
        with pytest.raises(PrecisionError, match="runs on the CPU"):
            from manytask.serving.precision import check

            check("int8", torch.device("cuda"))
    assert json.loads((bundle.root / "manifest.json").read_text())["tasks"]
