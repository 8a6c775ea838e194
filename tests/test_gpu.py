"""GPU paths, skipped where torch sees no CUDA device (CI has none; benchmarks/gpu/run.sh runs them on a GPU):
a run trained on a GPU in fp32, fp16 and bf16 evaluates on the CPU in the precision it has there (no forced
fp32) with the scores it had, and resumes on the CPU; a bundle is served from a GPU in fp32, bf16 and fp16."""

from __future__ import annotations

import json

import pytest
import torch

from manytask.config import load_config
from manytask.runs import Run, train_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_gpu_run_evaluates_and_resumes_on_the_cpu(mini_glue, tiny_config, tmp_path, monkeypatch, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    tiny_config["train"].update(device="cuda", precision=precision, steps=6, eval_every=None)
    summary = train_run(load_config(data=tiny_config), tmp_path / "r")
    monkeypatch.setenv("MANYTASK_DEVICE", "cpu")
    run = Run.open(tmp_path / "r")
    run.cfg.train.device = "cpu"  # the run's own precision: fp16 becomes fp32 on a CPU, bf16 stays where native
    again = run.evaluate()
    for task, value in summary["final"]["primary"].items():
        assert again["primary"][task] == pytest.approx(value, abs=0.05 if precision != "fp32" else 1e-4)
    # stopped on the GPU, resumed on the CPU (the checkpoint's tensors come back to the CPU)
    half = {**tiny_config, "train": {**tiny_config["train"], "steps": 8}}
    train_run(load_config(data=half), tmp_path / "cut", stop_at=4)
    cpu = {**half, "train": {**half["train"], "device": "cpu", "precision": "fp32"}}
    done = train_run(load_config(data=cpu), tmp_path / "cut", resume=True)
    assert done["total_steps"] == 8 and json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())["step"] == 8


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_bundle_is_served_from_the_gpu(flex_run, precision):
    from fastapi.testclient import TestClient

    from manytask.bundles import Bundle
    from manytask.serving.app import create_app
    from manytask.serving.predictor import MergedPredictor

    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    cpu = MergedPredictor(Bundle(flex_run[1] / "bundle"), "cpu")
    gpu = MergedPredictor(Bundle(flex_run[1] / "bundle"), "cuda", precision)
    assert next(gpu.model.parameters()).is_cuda
    texts = ["good fine day", "awful grim"]
    with TestClient(create_app(gpu)) as c:
        got = c.post("/v1/predict", json={"inputs": [{"text": t} for t in texts], "tasks": ["sst2"]}).json()
    want = cpu.predict(texts, None, ["sst2"])
    for g, w in zip(got["results"], want):
        assert g["sst2"]["probs"] == pytest.approx(w["sst2"]["probs"], abs=1e-4 if precision == "fp32" else 2e-2)


def test_teacher_targets_and_evaluation_run_in_the_run_precision(mini_glue, tiny_config, tmp_path):
    """The autocast dtype an evaluation and a teacher-target pass use on the GPU is the run's resolved one."""
    from manytask.runtime import resolve_precision

    tiny_config["train"].update(device="cuda", precision="auto", steps=2, eval_every=None)
    train_run(load_config(data=tiny_config), tmp_path / "r")
    run = Run.open(tmp_path / "r")
    want = resolve_precision("auto", torch.device("cuda"))
    assert run.precision == want and want in ("bf16", "fp32")
