"""The server: answers equal to each task's own model, clear 4xx errors, admin auth, hot task swaps
under load, micro-batching and Prometheus metrics."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from manytask.bundles import Bundle, package_from_run
from manytask.errors import ManytaskError
from manytask.inference import answer_batch
from manytask.runs import Run
from manytask.serving.app import Limits, create_app
from manytask.serving.batcher import MicroBatcher
from manytask.serving.predictor import MergedPredictor, SeparatePredictor
from tests.test_flex import PAIRS, TEXTS, other_run, selected_run

TOKEN = "s3cret-token-of-24-chars"


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


@pytest.fixture
def client(flex_run, bundle):
    app = create_app(MergedPredictor(bundle), Limits(max_inputs=8, max_body_bytes=20_000, max_wait_ms=2), TOKEN,
                     source_roots=[flex_run[1]])
    with TestClient(app) as c:
        yield c


def own_answers(flex_run, task: str, texts, pairs=None, run=None) -> list[dict]:
    r = Run.open(run or selected_run(flex_run, task))
    model = r.model_for(task)  # the task's own model, one process, its own forward pass
    answers = answer_batch(model, model.specs, r.tokenizer(), r.cfg.model.max_seq_length, torch.device("cpu"), "fp32",
                           texts, pairs, [task])
    return [a[task].to_json() for a in answers]


def assert_same(got: dict, want: dict) -> None:
    if "score" in want:
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    else:
        assert got["label"] == want["label"]
        assert got["probs"] == pytest.approx(want["probs"], abs=1e-5)


def test_oracle_server_answers_equal_each_tasks_own_model(flex_run, client):
    res = client.post("/v1/predict", json={"inputs": [{"text": t} for t in TEXTS]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["tasks"] == ["sst2"]  # by default every task that takes single texts
    for got, want in zip(body["results"], own_answers(flex_run, "sst2", TEXTS)):
        assert_same(got["sst2"], want)
    items = [{"text": t, "text_pair": p} for t, p in zip(TEXTS, PAIRS)]
    res = client.post("/v1/predict", json={"inputs": items, "tasks": ["stsb", "mrpc"]})
    assert res.status_code == 200, res.text
    for task in ("stsb", "mrpc"):
        for got, want in zip(res.json()["results"], own_answers(flex_run, task, TEXTS, PAIRS)):
            assert_same(got[task], want)
    score = res.json()["results"][0]["stsb"]["score"]
    assert 0.0 <= score <= 5.0  # regression answered on the task's own range


def test_tasks_health_and_metrics(client):
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [t["name"] for t in tasks] == ["mrpc", "sst2", "stsb"]
    assert {t["name"]: t["kind"] for t in tasks}["stsb"] == "regression"
    assert all(1 <= t["layers_run"] <= 4 for t in tasks)
    assert client.get("/healthz").json() == {"status": "ready", "tasks": 3, "precision": "fp32"}
    client.post("/v1/predict", json={"inputs": [{"text": "good"}], "tasks": ["sst2"]})
    client.post("/v1/predict", json={"inputs": [{"text": "good"}], "tasks": ["nope"]})
    text = client.get("/metrics").text
    assert 'manytask_requests_total{endpoint="/v1/predict",status="200"} 1.0' in text
    assert 'manytask_requests_total{endpoint="/v1/predict",status="404"} 1.0' in text
    assert 'manytask_task_predictions_total{task="sst2"} 1.0' in text
    assert "manytask_batch_size_count 1.0" in text and "manytask_request_seconds_bucket" in text


@pytest.mark.parametrize("payload,status,message", [
    ({"inputs": [{"text": "x"}], "tasks": ["nope"]}, 404, "unknown task(s): nope"),
    ({"inputs": [{"text": "  "}]}, 422, "inputs.0.text: Value error, text is empty"),
    ({"inputs": [{"text": 3}]}, 422, "inputs.0.text"),
    ({"inputs": "hello"}, 422, "inputs"),
    ({"inputs": []}, 422, "inputs"),
    ({"inputs": [{"text": "x", "extra": 1}]}, 422, "inputs.0.extra"),
    ({"inputs": [{"text": "x"}] * 9}, 413, "too many inputs: 9 (limit 8"),
    ({"inputs": [{"text": "x"}], "tasks": ["mrpc"]}, 422, "mrpc need text_pair"),
    ({"inputs": [{"text": "x", "text_pair": "y"}], "tasks": ["sst2"]}, 422, "sst2 need a single text"),
    ({"inputs": [{"text": "x", "text_pair": "y"}, {"text": "x"}]}, 422, "mix single texts and text pairs"),
    ({"inputs": [{"text": "x" * 20_001}]}, 413, "request body too large"),
])
def test_bad_requests_get_clear_4xx_and_the_server_goes_on(client, payload, status, message):
    res = client.post("/v1/predict", json=payload)
    assert res.status_code == status and message in res.json()["error"], res.text
    assert client.post("/v1/predict", json={"inputs": [{"text": "fine"}]}).status_code == 200


def test_malformed_json_is_a_422_and_a_streamed_body_is_counted(client):
    res = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 422 and "JSON" in res.json()["error"]

    def stream(n):
        yield b'{"inputs": [{"text": "'
        for _ in range(n):
            yield b"x" * 1000
        yield b'"}]}'

    res = client.post("/v1/predict", content=stream(5), headers={"content-type": "application/json"})
    assert res.status_code == 200, res.text  # a chunked body of unknown length is read, and counted
    res = client.post("/v1/predict", content=stream(50), headers={"content-type": "application/json"})
    assert res.status_code == 413 and "over 20000 bytes" in res.json()["error"]


def test_admin_calls_need_the_token(flex_run, bundle, client):
    source = {"source": str(other_run(flex_run, "sst2")), "task": "sst2"}
    assert client.put("/v1/tasks/sst2", json=source).status_code == 401
    assert client.put("/v1/tasks/sst2", json=source, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/v1/tasks/sst2", headers={"Authorization": TOKEN}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = client.put("/v1/tasks/sst2", json=source, headers=auth)
    assert res.status_code == 200 and res.json()["action"] == "updated", res.text
    got = client.post("/v1/predict", json={"inputs": [{"text": t} for t in TEXTS], "tasks": ["sst2"]}).json()
    for g, w in zip(got["results"], own_answers(flex_run, "sst2", TEXTS, run=other_run(flex_run, "sst2"))):
        assert_same(g["sst2"], w)
    assert bundle.manifest["tasks"]["sst2"]["dir"] != ""  # written through to the bundle on disk
    res = client.put("/v1/tasks/cola", json={"source": str(flex_run[1] / "nope")}, headers=auth)
    assert res.status_code == 400 and "neither a task package" in res.json()["error"]
    res = client.put("/v1/tasks/sst2", json={"source": str(flex_run[1] / "sst2" / "full")}, headers=auth)
    assert res.status_code == 400 and "trunk" in res.json()["error"]
    assert client.delete("/v1/tasks/stsb", headers=auth).json()["action"] == "removed"
    assert client.delete("/v1/tasks/stsb", headers=auth).status_code == 404
    assert [t["name"] for t in client.get("/v1/tasks").json()["tasks"]] == ["mrpc", "sst2"]
    assert Bundle(bundle.root).task_names() == ["mrpc", "sst2"]
    assert TOKEN not in client.get("/metrics").text


def test_without_a_token_admin_calls_are_refused(bundle):
    with TestClient(create_app(MergedPredictor(bundle))) as c:
        res = c.delete("/v1/tasks/sst2", headers={"Authorization": "Bearer anything"})
        assert res.status_code == 403 and "disabled" in res.json()["error"]


def test_swaps_during_requests_give_old_or_new_never_an_error_or_a_mix(flex_run, bundle):
    """Requests keep coming while sst2 flips between two versions and stsb is removed and re-added."""
    predictor = MergedPredictor(bundle)
    app = create_app(predictor, Limits(max_wait_ms=1), TOKEN)
    versions = [package_from_run(selected_run(flex_run, "sst2"), "sst2"),
                package_from_run(other_run(flex_run, "sst2"), "sst2")]
    stsb = package_from_run(selected_run(flex_run, "stsb"), "stsb")
    expected = [own_answers(flex_run, "sst2", TEXTS, run=r) for r in (selected_run(flex_run, "sst2"),
                                                                       other_run(flex_run, "sst2"))]
    assert expected[0][0]["probs"] != pytest.approx(expected[1][0]["probs"], abs=1e-4)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            stop = asyncio.Event()
            seen, statuses = [], []

            async def ask():
                while not stop.is_set():
                    r = await c.post("/v1/predict", json={"inputs": [{"text": t} for t in TEXTS], "tasks": ["sst2"]})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        seen.append([x["sst2"] for x in r.json()["results"]])

            async def swap():
                loop = asyncio.get_running_loop()
                for i in range(6):
                    await loop.run_in_executor(None, predictor.put, versions[(i + 1) % 2])
                    await loop.run_in_executor(None, predictor.remove, "stsb")
                    await loop.run_in_executor(None, predictor.put, stsb)
                stop.set()

            await asyncio.gather(swap(), *(ask() for _ in range(4)))
            await app.state.batcher.stop()
            return seen, statuses

    seen, statuses = asyncio.run(main())
    assert set(statuses) == {200} and len(seen) >= 6
    kinds = set()
    for answers in seen:
        matches = [v for v, exp in enumerate(expected)
                   if all(g["probs"] == pytest.approx(w["probs"], abs=1e-5) for g, w in zip(answers, exp))]
        assert len(matches) == 1  # all inputs of a request from one version
        kinds.add(matches[0])
    assert kinds == {0, 1}  # both versions were answered while swapping
    assert bundle.task_names() == ["mrpc", "sst2", "stsb"]


def test_the_batcher_merges_requests_for_different_tasks_and_routes_answers_back():
    sizes, calls = [], []

    def run(texts, pairs, tasks, snapshot, rows):
        calls.append((tuple(tasks), snapshot, {t: list(r) for t, r in rows.items()}))
        out = [{} for _ in texts]
        for t, r in rows.items():
            for i in r:
                out[i][t] = texts[i]
        return out

    async def main():
        b = MicroBatcher(run, max_batch=64, max_wait_ms=50, on_batch=sizes.append)
        jobs = [b.submit([f"{i}-a", f"{i}-b"], None, ["x"], "v1") for i in range(5)]
        jobs.append(b.submit(["other"], None, ["y"], "v1"))  # another task: the same forward pass
        jobs.append(b.submit(["both"], None, ["x", "y"], "v1"))
        jobs.append(b.submit(["new"], None, ["x"], "v2"))  # another snapshot: never batched with v1
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out

    out = asyncio.run(main())
    assert out[3] == [{"x": "3-a"}, {"x": "3-b"}]
    assert out[5] == [{"y": "other"}] and out[6] == [{"x": "both", "y": "both"}] and out[7] == [{"x": "new"}]
    assert sorted(sizes) == [1, 12]
    v1 = next(c for c in calls if c[1] == "v1")
    assert v1[0] == ("x", "y") and v1[2] == {"x": list(range(10)) + [11], "y": [10, 11]}


def test_a_failing_batch_fails_its_requests_not_the_batcher():
    def run(texts, pairs, tasks, snapshot, rows=None):
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [{} for _ in texts]

    async def main():
        b = MicroBatcher(run, max_wait_ms=0)
        with pytest.raises(RuntimeError, match="model failed"):
            await b.submit(["boom"], None, ["x"])
        ok = await b.submit(["fine"], None, ["x"])
        await b.stop()
        return ok

    assert asyncio.run(main()) == [{}]


def test_separate_models_serve_the_same_answers(flex_run):
    _, out, _ = flex_run
    runs = {t: out / t / "full" for t in ("sst2", "mrpc")}
    predictor = SeparatePredictor(runs)
    assert predictor.layers_run(["sst2", "mrpc"]) == 8
    with TestClient(create_app(predictor)) as c:
        res = c.post("/v1/predict", json={"inputs": [{"text": t} for t in TEXTS]})
        assert res.status_code == 200 and res.json()["tasks"] == ["sst2"]
        for g, w in zip(res.json()["results"], own_answers(flex_run, "sst2", TEXTS, run=runs["sst2"])):
            assert_same(g["sst2"], w)
        res = c.put("/v1/tasks/sst2", json={"source": "x"})
        assert res.status_code == 403
    with pytest.raises(ManytaskError, match="has no task 'stsb'"):
        SeparatePredictor({"stsb": runs["sst2"]})


def test_serve_command_checks_its_arguments_before_starting(flex_run, tmp_path):
    from typer.testing import CliRunner

    from manytask.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve"])
    assert res.exit_code == 2 and "either a bundle or one or more --run" in res.output
    res = runner.invoke(app, ["serve", "--run", "sst2"])
    assert res.exit_code == 2 and "expected TASK=RUN_DIR" in res.output
    res = runner.invoke(app, ["serve", "--run", f"stsb={flex_run[1] / 'sst2' / 'full'}"])
    assert res.exit_code == 2 and "has no task 'stsb'" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path)])
    assert res.exit_code == 2 and "not a bundle" in res.output
    res = runner.invoke(app, ["serve", str(flex_run[1] / "bundle"), "--admin-token-file", str(tmp_path / "none")])
    assert res.exit_code == 2 and "admin token file not found" in res.output


def test_one_task_per_request_traffic_shares_forward_passes(flex_run, bundle):
    """Clients each asking one different task: their requests share one forward pass, and each still gets
    exactly its own task's answer, equal to that task's own model."""
    predictor = MergedPredictor(bundle)
    app = create_app(predictor, Limits(max_wait_ms=200, max_batch=64), TOKEN)
    items = [{"text": t, "text_pair": p} for t, p in zip(TEXTS, PAIRS)]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            asks = [("stsb" if i % 2 else "mrpc", items[i]) for i in range(len(items))]
            res = await asyncio.gather(*(c.post("/v1/predict", json={"inputs": [item], "tasks": [task]})
                                         for task, item in asks))
            metrics = (await c.get("/metrics")).text
            await app.state.batcher.stop()
            return asks, res, metrics

    asks, res, metrics = asyncio.run(main())
    assert "manytask_batch_size_count 1.0" in metrics  # four requests, two task lists, one forward pass
    for (task, item), r in zip(asks, res):
        assert r.status_code == 200 and list(r.json()["results"][0]) == [task]
        want = own_answers(flex_run, task, [item["text"]], [item["text_pair"]])[0]
        assert_same(r.json()["results"][0][task], want)


def test_a_compiled_predictor_answers_as_the_eager_one(bundle):
    eager, compiled = MergedPredictor(bundle), MergedPredictor(bundle, compile=True)
    for w, g in zip(eager.predict(TEXTS, None, ["sst2"]), compiled.predict(TEXTS, None, ["sst2"])):
        assert g["sst2"]["probs"] == pytest.approx(w["sst2"]["probs"], abs=1e-4)
    with pytest.raises(ManytaskError, match="--compile runs fp32, bf16 or fp16 layers, not int8"):
        MergedPredictor(bundle, precision="int8", compile=True)
