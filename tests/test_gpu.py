"""GPU paths, skipped where torch sees no CUDA device (CI has none): a run trained on a GPU in fp16 and bf16
resumes and evaluates on the CPU with the same scores, and a bundle is served from a GPU."""

from __future__ import annotations

import pytest
import torch

from manytask.config import load_config
from manytask.runs import Run, train_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_gpu_run_evaluates_the_same_on_the_cpu(mini_glue, tiny_config, tmp_path, monkeypatch, precision):
    tiny_config["train"].update(device="cuda", precision=precision, steps=6, eval_every=None)
    summary = train_run(load_config(data=tiny_config), tmp_path / "r")
    monkeypatch.setenv("MANYTASK_DEVICE", "cpu")
    run = Run.open(tmp_path / "r")
    run.cfg.train.device, run.cfg.train.precision = "cpu", "fp32"
    again = run.evaluate()
    for task, value in summary["final"]["primary"].items():
        assert again["primary"][task] == pytest.approx(value, abs=0.02 if precision != "fp32" else 1e-4)


def test_a_bundle_is_served_from_the_gpu(flex_run):
    from fastapi.testclient import TestClient

    from manytask.bundles import Bundle
    from manytask.serving.app import create_app
    from manytask.serving.predictor import MergedPredictor

    cpu = MergedPredictor(Bundle(flex_run[1] / "bundle"), "cpu")
    gpu = MergedPredictor(Bundle(flex_run[1] / "bundle"), "cuda")
    assert next(gpu.model.parameters()).is_cuda
    texts = ["good fine day", "awful grim"]
    with TestClient(create_app(gpu)) as c:
        got = c.post("/v1/predict", json={"inputs": [{"text": t} for t in texts], "tasks": ["sst2"]}).json()
    want = cpu.predict(texts, None, ["sst2"])
    for g, w in zip(got["results"], want):
        assert g["sst2"]["probs"] == pytest.approx(w["sst2"]["probs"], abs=1e-4)
