"""ONNX Runtime as a serving runtime: the bundle exported once into pieces (trunk between split depths, a branch
and head per task), answers equal to PyTorch's (fp32) or close (int8 by ONNX Runtime's quantiser), each task run
on its own rows, dev scores through the same scoring code, and the task set fixed while serving."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from manytask.bundles import Bundle
from manytask.serving.app import create_app
from manytask.serving.launch import checked_scores
from manytask.serving.predictor import MergedPredictor
from tests.test_flex import PAIRS, TEXTS

pytest.importorskip("onnxruntime")
onnx_runtime = pytest.importorskip("manytask.serving.onnx_runtime")


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def _close(a: dict, b: dict, tol: float) -> None:
    if "score" in a:
        assert a["score"] == pytest.approx(b["score"], abs=tol)
    else:
        assert a["probs"] == pytest.approx(b["probs"], abs=tol)


def test_fp32_pieces_answer_as_pytorch_and_int8_close(bundle):
    torch_side = MergedPredictor(bundle)
    onnx_side = onnx_runtime.OnnxPredictor(bundle)
    pieces = onnx_runtime.pieces_dir(bundle, "fp32")
    assert (pieces / "embed.onnx").exists() and (pieces / "task_sst2.onnx").exists()
    assert onnx_side.layers_run(["sst2", "stsb"]) == torch_side.layers_run(["sst2", "stsb"])
    for texts, pairs, tasks, r in ((TEXTS, None, ["sst2"], None), (TEXTS, PAIRS, ["mrpc", "stsb"], None),
                                   (TEXTS[:3], None, ["sst2"], {"sst2": [0, 2]})):  # a task on its own rows
        want = torch_side.predict(texts, pairs, tasks, rows=r)
        got = onnx_side.predict(texts, pairs, tasks, rows=r)
        for w, g in zip(want, got):
            assert set(w) == set(g)
            for t in w:
                _close(g[t], w[t], 1e-4)
    int8 = onnx_runtime.OnnxPredictor(bundle, "int8")
    assert (onnx_runtime.pieces_dir(bundle, "int8") / "pieces.json").exists()
    for w, g in zip(torch_side.predict(TEXTS, None, ["sst2"]), int8.predict(TEXTS, None, ["sst2"])):
        _close(g["sst2"], w["sst2"], 0.05)


def test_the_onnx_server_answers_scores_and_keeps_its_tasks(mini_glue, bundle, monkeypatch):
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(mini_glue))
    scores = checked_scores(bundle, "int8", 100.0, False, echo=lambda *_: None, runtime="onnx")
    assert set(scores) == {"fp32", "onnx-int8"} and all("score" in v for v in scores["onnx-int8"].values())
    token = "an-admin-token-of-32-characters!"
    with TestClient(create_app(onnx_runtime.OnnxPredictor(bundle, "int8"), admin_token=token, dev_scores=scores)) as c:
        body = c.get("/v1/tasks").json()
        assert body["precision"] == "onnx-int8" and body["tasks"][0]["dev"]["onnx-int8"]["metric"]
        got = c.post("/v1/predict", json={"inputs": [{"text": "fine"}], "tasks": ["sst2"]})
        assert got.status_code == 200 and set(got.json()["results"][0]) == {"sst2"}
        gone = c.delete("/v1/tasks/sst2", headers={"Authorization": f"Bearer {token}"})
        assert gone.status_code == 409 and "fixed ONNX export" in gone.json()["error"]


def test_the_onnx_runtime_refuses_what_it_cannot_serve(bundle):
    import manytask as mt

    with pytest.raises(mt.ManytaskError, match="serves fp32 or int8"):
        onnx_runtime.OnnxPredictor(bundle, "bf16")
    with pytest.raises(mt.ManytaskError, match="--runtime onnx serves a bundle on the CPU in fp32 or int8"):
        mt.serve(bundle.root, precision="auto", runtime="onnx")
