"""Serving faults found by attacking the server and by operating it (issue 10): no request can hurt
another, no admin mistake can break a bundle, the edge holds its limits, errors are 4xx in one shape."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from manytask.bundles import Bundle, package_from_run
from manytask.serving.app import Limits, create_app
from manytask.serving.batcher import MicroBatcher
from manytask.serving.predictor import MergedPredictor
from manytask.serving.protocol import protocol_with
from tests.test_flex import other_run, selected_run

TOKEN = "an-admin-token-of-32-characters!"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def make_app(bundle, flex_run, predictor=None, **limits):
    return create_app(predictor or MergedPredictor(bundle), Limits(**{"max_body_bytes": 20_000, "max_wait_ms": 2, **limits}),
                      TOKEN, source_roots=[flex_run[1], bundle.root.parent])


@pytest.fixture
def client(bundle, flex_run):
    with TestClient(make_app(bundle, flex_run)) as c:
        yield c


def snapshot(bundle: Bundle) -> tuple[bytes, list[str]]:
    """What must not change when a change is refused: the manifest's bytes and the task directories."""
    return (bundle.root / "manifest.json").read_bytes(), sorted(p.name for p in (bundle.root / "tasks").iterdir())


# ---- 1. one bad input cannot fail other requests --------------------------------------------------------------
@pytest.mark.parametrize("body, where", [
    ('{"inputs": [{"text": "x\\ud800y"}]}', "inputs.0.text"),
    ('{"inputs": [{"text": "x", "text_pair": "\\udfff"}], "tasks": ["mrpc"]}', "inputs.0.text_pair"),
    ('{"inputs": [{"text": "x"}], "tasks": ["sst2\\ud800"]}', "tasks"),
])
def test_a_lone_surrogate_is_a_422_at_the_edge(client, body, where):
    res = client.post("/v1/predict", content=body.encode(), headers={"content-type": "application/json"})
    error = res.json()["error"]
    assert res.status_code == 422 and where in error and ("surrogate" in error or "unicode" in error), res.text


def test_a_lone_surrogate_in_a_put_source_is_a_422(client):
    res = client.put("/v1/tasks/sst2", content=b'{"source": "runs/\\ud800"}', headers={**AUTH, "content-type":
                                                                                         "application/json"})
    assert res.status_code == 422 and "source" in res.json()["error"]


def test_a_failing_request_fails_alone_in_its_batch():
    def run(texts, pairs, tasks, snapshot, rows=None):
        if "boom" in texts:
            raise RuntimeError("model failed")
        return [{"echo": t} for t in texts]

    async def main():
        b = MicroBatcher(run, max_batch=64, max_wait_ms=50)
        jobs = [b.submit([f"ok-{i}"], None, ["x"]) for i in range(20)]
        jobs.insert(7, b.submit(["boom"], None, ["x"]))
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await b.stop()
        return out

    out = asyncio.run(main())
    assert isinstance(out[7], RuntimeError)
    assert [o for i, o in enumerate(out) if i != 7] == [[{"echo": f"ok-{i}"}] for i in range(20)]


def test_over_http_only_the_bad_request_gets_a_500_and_it_is_counted(bundle, flex_run):
    class Fragile(MergedPredictor):
        def predict(self, texts, pairs, tasks, snapshot=None, rows=None):
            if any("poison" in t for t in texts):
                raise RuntimeError("tokenizer exploded")
            return super().predict(texts, pairs, tasks, snapshot, rows)

    app = make_app(bundle, flex_run, Fragile(bundle), max_wait_ms=30)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            texts = [f"good day {i}" for i in range(12)] + ["poison pill"]
            res = await asyncio.gather(*(c.post("/v1/predict", json={"inputs": [{"text": t}], "tasks": ["sst2"]})
                                         for t in texts))
            metrics = (await c.get("/metrics")).text
            await app.state.batcher.stop()
            return res, metrics

    res, metrics = asyncio.run(main())
    assert [r.status_code for r in res] == [200] * 12 + [500]
    assert res[-1].json() == {"error": "internal error (logged on the server)"}
    assert 'manytask_requests_total{endpoint="/v1/predict",status="500"} 1.0' in metrics


# ---- 2. the body limit holds, whatever the headers say ---------------------------------------------------------
def asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks, delay: float = 0.0):
    """Drive the ASGI app directly (no client library rewrites the headers); returns status, body, chunks read."""
    sent, read = [], [0]

    async def main():
        pending = list(chunks)

        async def receive():
            if delay:
                await asyncio.sleep(delay)
            if not pending:
                return {"type": "http.disconnect"}
            read[0] += 1
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("t", 80),
                 "client": ("c", 1), "root_path": "", "asgi": {"version": "3.0"}}
        await app(scope, receive, send)

    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body) if body else None, read[0]


def test_content_length_with_transfer_encoding_is_refused(bundle, flex_run):
    app = make_app(bundle, flex_run)
    status, body, read = asgi_call(app, "POST", "/v1/predict", [(b"content-length", b"10"),
                                                               (b"transfer-encoding", b"chunked")], [b"x" * 1000] * 500)
    assert status == 400 and "not both" in body["error"] and read == 0


def test_a_chunked_body_is_counted_and_reading_stops_at_the_limit(bundle, flex_run):
    app = make_app(bundle, flex_run)
    status, body, read = asgi_call(app, "POST", "/v1/predict", [(b"transfer-encoding", b"chunked")],
                                   [b"x" * 1000] * 5000)  # 5 MB offered, 20 kB allowed
    assert status == 413 and read == 21  # stopped at the first chunk over the limit
    status, body, _ = asgi_call(app, "POST", "/v1/predict", [(b"content-length", b"999999999")], [b"{}"])
    assert status == 413 and "999999999" in body["error"]


def test_a_body_that_does_not_arrive_in_time_is_a_408(bundle, flex_run):
    app = create_app(MergedPredictor(bundle), Limits(), TOKEN, body_timeout=0.2)
    status, body, _ = asgi_call(app, "POST", "/v1/predict", [(b"content-length", b"30")], [b"{}"], delay=1.0)
    assert status == 408 and "0.2 s" in body["error"]


class LiveServer:
    """uvicorn in a thread on a free loopback port, with the serve command's protocol and limits."""

    def __init__(self, app, header_timeout: float = 10.0, max_idle: int = 512):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                http=protocol_with(header_timeout, max_idle), limit_concurrency=None,
                                timeout_keep_alive=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_idle_and_slowloris_sockets_are_closed_and_good_clients_served(bundle, flex_run):
    with LiveServer(make_app(bundle, flex_run), header_timeout=0.5) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port))
        slow = socket.create_connection(("127.0.0.1", srv.port))
        slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a header line now and then never completes the request head
            time.sleep(0.1)
            slow.sendall(b"X-Slow: 1\r\n")
        assert _closed_within(idle, 3.0) and _closed_within(slow, 3.0)
        r = httpx.post(f"{srv.url}/v1/predict", json={"inputs": [{"text": "fine"}]}, timeout=30)
        assert r.status_code == 200
        raw = socket.create_connection(("127.0.0.1", srv.port))
        raw.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/json\r\n\r\n" + b"5\r\nhello\r\n" * 50)
        raw.settimeout(10)
        head = raw.recv(4096)
        assert head.startswith(b"HTTP/1.1 400")
        for s in (idle, slow, raw):
            s.close()


# ---- 3. a bad PUT is refused before anything is written ---------------------------------------------------------
def _broken_package(flex_run, tmp_path, how: str):
    pkg = package_from_run(selected_run(flex_run, "sst2"), "sst2")
    if how == "labels":  # a head with 2 outputs, a spec with 3 labels
        pkg.spec = pkg.spec.model_copy(update={"labels": ["0", "1", "2"]})
    elif how == "nan":
        key = next(k for k in pkg.tensors if k.startswith("head."))
        pkg.tensors[key] = torch.full_like(pkg.tensors[key], float("nan"))
    elif how == "inf-branch":
        key = next((k for k in pkg.tensors if k.startswith("branch.")), next(iter(pkg.tensors)))
        pkg.tensors[key] = pkg.tensors[key].clone()
        pkg.tensors[key].view(-1)[0] = float("inf")
    out = tmp_path / f"pkg-{how}"
    pkg.write(out)
    return out


@pytest.mark.parametrize("how, message", [("labels", "the head has 2 outputs, the task declares 3"),
                                          ("nan", "non-finite weights"), ("inf-branch", "non-finite weights")])
def test_a_package_that_would_break_serving_is_refused_and_nothing_is_written(bundle, flex_run, tmp_path, how, message):
    source = _broken_package(flex_run, bundle.root.parent, how)
    before = snapshot(bundle)
    with TestClient(make_app(bundle, flex_run)) as c:
        res = c.put("/v1/tasks/sst2", json={"source": str(source)}, headers=AUTH)
        assert res.status_code == 400 and message in res.json()["error"], res.text
        assert c.post("/v1/predict", json={"inputs": [{"text": "fine"}], "tasks": ["sst2"]}).status_code == 200
    assert snapshot(bundle) == before
    assert sorted(Bundle(bundle.root).merged_model().task_names) == ["mrpc", "sst2", "stsb"]  # a restart works


def test_invalid_names_truncated_files_and_long_sources_are_4xx_and_write_nothing(bundle, flex_run, client):
    before = snapshot(bundle)
    res = client.put("/v1/tasks/sst2.v2", json={"source": str(other_run(flex_run, "sst2")), "task": "sst2"},
                     headers=AUTH)
    assert res.status_code == 422 and "name" in res.json()["error"]
    pkg_dir = bundle.root.parent / "truncated"
    package_from_run(other_run(flex_run, "sst2"), "sst2").write(pkg_dir)
    text = (pkg_dir / "task.json").read_text()
    (pkg_dir / "task.json").write_text(text[: len(text) // 2])
    res = client.put("/v1/tasks/sst2", json={"source": str(pkg_dir)}, headers=AUTH)
    assert res.status_code == 400 and "damaged or incomplete" in res.json()["error"]
    res = client.put("/v1/tasks/sst2", json={"source": "x" * 5000}, headers=AUTH)
    assert res.status_code == 422
    res = client.put("/v1/tasks/sst2", json={"source": str(bundle.root.parent / ("a" * 300))}, headers=AUTH)
    assert res.status_code == 400 and "unreadable" in res.json()["error"]
    res = client.post("/v1/predict", json={"inputs": [{"text": "x"}], "tasks": []})
    assert res.status_code == 422 and "tasks" in res.json()["error"]
    assert snapshot(bundle) == before


def test_the_bundle_cli_checks_a_package_before_writing_it(bundle, flex_run, tmp_path):
    from typer.testing import CliRunner

    from manytask.cli import app

    source = _broken_package(flex_run, tmp_path, "labels")
    before = snapshot(bundle)
    res = CliRunner().invoke(app, ["bundle", "update", str(bundle.root), "--from", str(source)])
    assert res.exit_code == 2 and "the head has 2 outputs" in res.output
    assert snapshot(bundle) == before


# ---- 4. admin: source roots, token, auth first ----------------------------------------------------------------
def test_a_source_outside_the_roots_is_refused_without_saying_whether_it_exists(client, bundle, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "task.json").write_text("{}")
    answers = [client.put("/v1/tasks/sst2", json={"source": s}, headers=AUTH)
               for s in (str(outside), str(outside / "does-not-exist"), "/etc/passwd", "../../../../etc")]
    assert {r.status_code for r in answers} == {403}
    assert len({r.json()["error"] for r in answers}) == 1


def test_tokens_are_stripped_and_short_ones_refused(bundle, tmp_path):
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(MergedPredictor(bundle), admin_token="short-token")
    from manytask.serving.app import check_token

    assert check_token("") is None and check_token("  \n") is None  # an empty variable: no token, admin off
    app = create_app(MergedPredictor(bundle), admin_token=f"  {TOKEN}\n")
    with TestClient(app) as c:
        assert c.delete("/v1/tasks/nope", headers=AUTH).status_code == 404  # the stripped token is the token
    from typer.testing import CliRunner

    from manytask.cli import app as cli

    (tmp_path / "tok").write_text("tiny\n")
    res = CliRunner().invoke(cli, ["serve", str(bundle.root), "--admin-token-file", str(tmp_path / "tok")])
    assert res.exit_code == 2 and "at least 16 characters" in res.output


def test_auth_is_checked_before_the_body(client):
    bad_body = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    assert client.put("/v1/tasks/sst2", **bad_body).status_code == 401
    assert client.put("/v1/tasks/sst2", **{**bad_body, "headers": {**bad_body["headers"], **AUTH}}).status_code == 422
    assert client.delete("/v1/tasks/sst2.v2").status_code == 401


# ---- 5. metrics stay bounded and count failures -----------------------------------------------------------------
def test_metrics_are_labelled_by_route_template(client):
    for i in range(50):
        client.get(f"/random/{i}")
    client.delete("/v1/tasks/nope", headers=AUTH)
    client.delete("/v1/tasks/other", headers=AUTH)
    text = client.get("/metrics").text
    assert 'endpoint="unmatched",status="404"} 50.0' in text
    assert "/random/" not in text
    assert 'manytask_requests_total{endpoint="/v1/tasks/{name}",status="404"} 2.0' in text


# ---- 6. one error shape, documented ----------------------------------------------------------------------------
def test_framework_errors_use_the_error_shape_and_openapi_documents_them(client):
    res = client.get("/nope")
    assert res.status_code == 404 and set(res.json()) == {"error"}
    res = client.get("/v1/predict")
    assert res.status_code == 405 and set(res.json()) == {"error"}
    spec = client.get("/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    for key in (("POST", "/v1/predict"), ("PUT", "/v1/tasks/{name}"), ("DELETE", "/v1/tasks/{name}")):
        codes = set(ops[key]["responses"])
        assert {"422", "500"} <= codes, key
        assert ops[key]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"401", "403"} <= set(ops[("PUT", "/v1/tasks/{name}")]["responses"])
    assert "413" in ops[("POST", "/v1/predict")]["responses"]


# ---- schemathesis over /openapi.json, against a live server ----------------------------------------------------
@pytest.mark.parametrize("with_token", [False, True])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(bundle, flex_run, with_token):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    with LiveServer(make_app(bundle, flex_run)) as srv:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        headers = AUTH if with_token else {}
        failures, calls = [], [0]
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=15, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                calls[0] += 1
                try:
                    case.call_and_validate(base_url=srv.url, headers=headers, checks=checks, timeout=30)
                except AssertionError as e:  # schemathesis groups failed checks into an assertion error
                    failures.append(f"{case.method} {case.path}: {str(e)[:400]}")

            operation.as_strategy()  # the operation can generate requests
            from hypothesis import given

            given(case=operation.as_strategy())(run)()
    assert calls[0] > 40
    assert not failures, "\n".join(failures[:5])
