"""The server for people as well as scripts: Swagger UI, liveness apart from readiness, CORS for browser front
ends that never opens the admin routes, idle sockets that cannot starve requests, read-only bundles in every
precision, and a precision that cannot be checked refused unless forced."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from manytask.bundles import Bundle
from manytask.serving import precision as precision_module
from manytask.serving.app import Limits, create_app
from manytask.serving.launch import checked_scores
from manytask.models.precision import cache_kind
from manytask.serving.precision import PrecisionError
from manytask.serving.predictor import MergedPredictor
from tests.test_serving_faults import LiveServer

TOKEN = "an-admin-token-of-32-characters!"
ORIGIN = "https://app.example.com"


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def test_docs_are_on_by_default_and_can_be_turned_off(bundle):
    with TestClient(create_app(MergedPredictor(bundle))) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert "/v1/predict" in c.get("/openapi.json").json()["paths"]
    with TestClient(create_app(MergedPredictor(bundle), docs=False)) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404


def test_liveness_readiness_and_the_healthz_alias(bundle):
    app = create_app(MergedPredictor(bundle), admin_token=TOKEN)
    outside = TestClient(app)  # no lifespan run: the server has not started serving
    assert outside.get("/livez").json() == {"status": "alive"}
    assert outside.get("/readyz").status_code == 503 and "not ready" in outside.get("/readyz").json()["error"]
    with TestClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "tasks": 3, "precision": "fp32"}
        assert c.get("/healthz").json() == ready.json()
        for task in ("mrpc", "sst2", "stsb"):  # a bundle emptied by its admin serves nothing: not ready
            assert c.delete(f"/v1/tasks/{task}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/readyz").status_code == 503 and c.get("/livez").status_code == 200
    assert outside.get("/readyz").status_code == 503  # stopped


def test_cors_opens_read_and_predict_routes_to_listed_origins_and_never_admin_routes(bundle):
    with TestClient(create_app(MergedPredictor(bundle), admin_token=TOKEN, cors_origins=[ORIGIN])) as c:
        pre = c.options("/v1/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
        got = c.post("/v1/predict", json={"inputs": [{"text": "fine"}]}, headers={"Origin": ORIGIN})
        assert got.status_code == 200 and got.headers["access-control-allow-origin"] == ORIGIN
        for method in ("PUT", "DELETE"):
            pre = c.options("/v1/tasks/sst2", headers={"Origin": ORIGIN, "Access-Control-Request-Method": method,
                                                       "Access-Control-Request-Headers": "authorization"})
            assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
        pre = c.options("/v1/tasks", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                              "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 400  # the admin token's header is never allowed from a browser
        put = c.put("/v1/tasks/sst2", json={"source": "x"}, headers={"Origin": ORIGIN})  # a simple request
        assert "access-control-allow-origin" not in put.headers
        other = c.get("/v1/tasks", headers={"Origin": "https://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    with TestClient(create_app(MergedPredictor(bundle))) as c:  # none by default
        pre = c.options("/v1/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


def test_hundreds_of_half_open_sockets_do_not_starve_a_request(bundle):
    """300 connections whose request head never finishes: the oldest idle ones are closed beyond the limit,
    and a well-formed request is answered at once (uvicorn's own limit counted them and answered 503)."""
    app = create_app(MergedPredictor(bundle))
    with LiveServer(app, header_timeout=30.0, max_idle=64) as srv:
        sockets = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # never finished
            sockets.append(s)
        time.sleep(0.5)
        start = time.perf_counter()
        r = httpx.post(f"{srv.url}/v1/predict", json={"inputs": [{"text": "fine"}]}, timeout=10)
        assert r.status_code == 200 and time.perf_counter() - start < 5.0
        closed = 0
        for s in sockets:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except (socket.timeout, TimeoutError):
                pass
            except ConnectionResetError:
                closed += 1
            s.close()
        assert 300 - 64 - 2 <= closed <= 300 - 64 + 2  # the newest 64 were kept open, waiting out their timeout


def test_requests_in_flight_are_limited_apart_and_probes_always_answer(bundle):
    class Slow(MergedPredictor):
        def predict(self, *a, **k):
            time.sleep(0.6)
            return super().predict(*a, **k)

    app = create_app(Slow(bundle), Limits(max_in_flight=1, max_wait_ms=0))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/predict", json={"inputs": [{"text": "a"}]}))
                await asyncio.sleep(0.2)
                second = await c.post("/v1/predict", json={"inputs": [{"text": "b"}]})
                probe = await c.get("/livez")
                return (await first), second, probe

    first, second, probe = asyncio.run(main())
    assert first.status_code == 200 and probe.status_code == 200
    assert second.status_code == 503 and "1 requests in flight (limit 1)" in second.json()["error"]


def test_a_read_only_bundle_serves_int8_with_scores_cached_outside_it(mini_glue, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(mini_glue))
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path / "cache"))
    root = bundle.root.resolve()
    if os.geteuid() == 0:  # root writes anywhere: say the volume is read-only as a mount would
        real = os.access
        monkeypatch.setattr(precision_module.os, "access",
                            lambda p, mode: False if mode == os.W_OK and str(p).startswith(str(root)) else real(p, mode))
    else:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    scores = checked_scores(bundle, "int8", 100.0, force=False, echo=lambda *_: None)
    assert set(scores) == {"fp32", "int8"} and all("score" in v for v in scores["int8"].values())
    assert not (root / "scores").exists()
    cached = list((tmp_path / "cache" / "scores").rglob(f"*.int8.{cache_kind('int8', 'cpu')}.json"))
    assert len(cached) == 3
    with TestClient(create_app(MergedPredictor(bundle, precision="int8"), dev_scores=scores)) as c:
        assert c.post("/v1/predict", json={"inputs": [{"text": "fine"}]}).status_code == 200


def test_a_precision_that_cannot_be_checked_is_refused_unless_forced(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(tmp_path / "no-glue-here"))
    with pytest.raises(PrecisionError) as err:
        checked_scores(bundle, "int8", 0.5, force=False, echo=lambda *_: None)
    message = str(err.value)
    assert message.startswith("int8 cannot be checked against fp32 for: mrpc (")
    assert all(t in message for t in ("sst2 (", "stsb (")) and "--force" in message
    scores = checked_scores(bundle, "int8", 0.5, force=True, echo=lambda *_: None)
    assert all("unscored" in v for v in scores["int8"].values())


def test_serve_checks_the_new_options_before_starting(bundle, monkeypatch):
    import manytask as mt

    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append((app, kw)))
    with pytest.raises(mt.ManytaskError, match="--cors-origin 'app.example.com': an origin is scheme://host"):
        mt.serve(bundle.root, cors_origins=("app.example.com",))
    with pytest.raises(mt.ManytaskError, match="--max-idle-connections and --limit-concurrency: 1 or more"):
        mt.serve(bundle.root, max_idle_connections=0)
    mt.serve(bundle.root, docs=False, cors_origins=(ORIGIN,), max_idle_connections=7, limits={"max_in_flight": 3})
    app, kw = started[0]
    assert kw["limit_concurrency"] is None and kw["http"].max_idle == 7  # connections: ours; requests: the app's
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/v1/tasks", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
