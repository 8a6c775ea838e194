"""``--precision auto``: a precision plan that makes int8 (per channel) only the units (trunk layers, branch
layers) that keep every task within the tolerance, searched from the least sensitive, written to the bundle
(by manifest hash), reloaded, served, and shown in ``GET /v1/tasks``."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

import manytask as mt
from manytask.bundles import Bundle
from manytask.models.precision import PrecisionError, units
from manytask.serving import plan as plan_module
from manytask.serving.app import create_app
from manytask.serving.launch import checked_scores
from manytask.serving.plan import load_plan, plan_path, search_plan
from manytask.serving.predictor import MergedPredictor, SeparatePredictor


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def _int8(module) -> bool:
    return any("quantized" in type(m).__module__ for m in module.modules())


def test_per_channel_int8_is_its_own_precision(flex_run, bundle):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    model = MergedPredictor(bundle, precision="int8-channel").model
    linears = [m for m in model.adapter.layers.modules() if isinstance(m, QLinear)]
    assert linears and all(m.weight().qscheme() in (__import__("torch").per_channel_affine,) for m in linears)
    tensor = MergedPredictor(bundle, precision="int8").model
    assert all(m.weight().qscheme() == __import__("torch").per_tensor_affine
               for m in tensor.adapter.layers.modules() if isinstance(m, QLinear))


def test_a_plan_within_a_wide_tolerance_takes_every_unit_and_is_written_reloaded_and_served(mini_glue, bundle,
                                                                                             monkeypatch):
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(mini_glue))
    scores = checked_scores(bundle, "auto", 100.0, force=False, echo=lambda *_: None)
    plan = load_plan(bundle, 100.0)
    every = set(units(bundle.merged_model()))
    assert plan is not None and set(plan["int8"]) == every and plan["fp32"] == []
    assert plan_path(bundle, 100.0).parent == bundle.root / "scores"
    assert set(scores) == {"fp32", "auto"} and scores["auto"] == plan["scores"]
    assert all(info["int8_layers"] == info["layers_run"] > 0 for info in plan["tasks"].values())
    # reloaded, not searched again
    monkeypatch.setattr(plan_module, "search_plan", lambda *a, **k: pytest.fail("the plan should be read back"))
    assert mt.Bundle(bundle.root).score("auto", mini_glue, tolerance=100.0)["auto"] == plan["scores"]
    served = MergedPredictor(bundle, precision="auto", plan=plan)
    assert all(_int8(module) for module, _ in units(served.model).values())
    with TestClient(create_app(served, dev_scores=scores)) as c:
        body = c.get("/v1/tasks").json()
        assert body["precision"] == "auto" and set(body["plan"]["int8"]) == every
        assert all(t["plan"]["int8_layers"] == t["plan"]["layers_run"] for t in body["tasks"])
        assert c.post("/v1/predict", json={"inputs": [{"text": "fine"}]}).status_code == 200
    model = mt.Bundle(bundle.root).model(precision="auto", tolerance=100.0)
    assert all(_int8(module) for module, _ in units(model.net).values())
    with pytest.raises(mt.ManytaskError, match="no precision plan for tolerance 0.5"):
        mt.Bundle(bundle.root).model(precision="auto")


def test_the_search_keeps_fp32_what_would_cost_a_task_too_much(mini_glue, bundle, monkeypatch):
    """Scores made up from which units are int8: every unit costs its tasks 0.1 point, stsb's branch costs stsb
    2 points, trunk layer 0 costs every task 0.3. With a tolerance of 0.5 the search must keep stsb's branch and
    trunk.0 in fp32, and stsb, none of whose own layers fit, says it is served in fp32 where all do not."""
    def fake(model, data, tokenizer, max_len, precision="fp32", batch_size=64):
        task = data.name
        run = {u for u, (m, tasks) in units(model).items() if task in tasks and _int8(m)}
        cost = 0.1 * len(run) + (2.0 if any(u.startswith("branch.stsb") for u in run) else 0.0)
        cost += 0.3 if "trunk.0" in run else 0.0
        return {"score": 0.8 - cost / 100, "metric": "accuracy", "n": 24}

    monkeypatch.setattr(plan_module, "task_score", fake)
    monkeypatch.setattr(plan_module, "dev_scores", lambda b, m, p, g, device=None: {
        t: {"score": 0.8, "metric": "accuracy", "n": 24} for t in b.manifest["tasks"]})
    plan = search_plan(bundle, mini_glue, 0.5, echo=lambda *_: None)
    model = bundle.merged_model()
    every = units(model)
    stsb_branch = {u for u in every if u.startswith("branch.stsb")}
    assert stsb_branch and stsb_branch <= set(plan["fp32"]) and "trunk.0" in plan["fp32"]
    for t, info in plan["tasks"].items():
        assert 100 * (0.8 - plan["scores"][t]["score"]) <= 0.5 + 1e-9  # every task within the tolerance
        assert info["layers_run"] == sum(1 for _, ts in every.values() if t in ts)
    assert plan["sensitivity"]["trunk.0"] == pytest.approx(0.4)  # measured alone: 0.1 + 0.3
    assert list(plan["int8"]) == sorted(plan["int8"], key=lambda u: (plan["sensitivity"][u], u))


def test_a_task_with_no_room_is_served_in_fp32_and_says_so(mini_glue, bundle, monkeypatch):
    def fake(model, data, tokenizer, max_len, precision="fp32", batch_size=64):
        hit = any(_int8(m) for u, (m, tasks) in units(model).items() if data.name in tasks)
        return {"score": 0.8 - (0.05 if hit and data.name == "mrpc" else 0.0), "metric": "accuracy", "n": 24}

    monkeypatch.setattr(plan_module, "task_score", fake)
    monkeypatch.setattr(plan_module, "dev_scores", lambda b, m, p, g, device=None: {
        t: {"score": 0.8, "metric": "accuracy", "n": 24} for t in b.manifest["tasks"]})
    plan = search_plan(bundle, mini_glue, 0.5, echo=lambda *_: None)
    assert plan["tasks"]["mrpc"]["int8_layers"] == 0
    assert plan["tasks"]["mrpc"]["note"] == "served in fp32: no layer it runs stays within 0.5 points in int8"
    assert all(plan["tasks"][t]["int8_layers"] > 0 for t in ("sst2", "stsb"))


def test_auto_without_dev_data_is_refused_unless_forced_and_keeps_those_tasks_fp32(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(tmp_path / "nothing"))
    with pytest.raises(PrecisionError, match="auto cannot be checked against fp32 for: mrpc"):
        checked_scores(bundle, "auto", 0.5, force=False, echo=lambda *_: None)
    plan = load_plan(bundle, 0.5)
    assert plan["int8"] == [] and all("its dev data is not on this machine" in t["note"] for t in plan["tasks"].values())


def test_separate_models_do_not_take_a_plan(flex_run):
    from tests.test_flex import selected_run

    with pytest.raises(PrecisionError, match="auto plans a bundle's layers"):
        SeparatePredictor({"sst2": selected_run(flex_run, "sst2")}, precision="auto")
