"""The HTTP server (FastAPI): predict with any set of a bundle's tasks, list them, change one at a time.

    POST   /v1/predict        {"inputs": [{"text": ..., "text_pair": ...}], "tasks": [...]}
    GET    /v1/tasks          tasks, kinds, labels, layers
    PUT    /v1/tasks/{name}   {"source": "<task package or run dir>", "task": "<task in that run>"}  (admin)
    DELETE /v1/tasks/{name}   (admin)
    GET    /healthz, /metrics (Prometheus)

Admin calls need ``Authorization: Bearer <token>``; the token comes from an environment variable
or a file and is never logged. Without a token, admin calls are refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from manytask.serving.batcher import MicroBatcher
from manytask.serving.bundle import BundleError, load_package
from manytask.serving.predictor import MergedPredictor, Predictor

log = logging.getLogger(__name__)


class Limits(BaseModel):
    max_inputs: int = 64  # per request
    max_text_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 32  # inputs per forward pass
    max_wait_ms: float = 5.0


class InputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    text_pair: Optional[str] = None

    @field_validator("text")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[InputItem] = Field(min_length=1)
    tasks: Optional[list[str]] = None


class PutTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str  # a task package directory, or a run directory (with "task")
    task: Optional[str] = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(predictor: Predictor, limits: Optional[Limits] = None, admin_token: Optional[str] = None) -> FastAPI:
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await app.state.batcher.stop()

    app = FastAPI(title="manytask", docs_url=None, redoc_url=None, lifespan=lifespan)
    registry = CollectorRegistry()
    requests_total = Counter("manytask_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("manytask_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("manytask_batch_size", "Inputs per forward pass", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    task_count = Counter("manytask_task_predictions_total", "Predictions per task", ["task"], registry=registry)
    batcher = MicroBatcher(predictor.predict, limits.max_batch, limits.max_wait_ms, on_batch=batch_sizes.observe)
    admin_lock = asyncio.Lock()
    app.state.predictor, app.state.batcher = predictor, batcher

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        size = request.headers.get("content-length")
        endpoint = request.url.path if not request.url.path.startswith("/v1/tasks/") else "/v1/tasks/{name}"
        start = time.perf_counter()
        if size is None and request.method in ("POST", "PUT"):
            # a streamed body of unknown size could be any size: ask for a declared length instead
            response = _error(411, "send a Content-Length header (streamed request bodies are not accepted)")
        elif size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
            response = _error(413, f"request body too large ({size} bytes; limit {limits.max_body_bytes})")
        else:
            response = await call_next(request)
        latency.labels(endpoint).observe(time.perf_counter() - start)
        requests_total.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if x != "body")
            parts.append(f"{loc or 'body'}: {e['msg']}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    def _admin(request: Request) -> None:
        if not admin_token:
            raise HTTPException(403, "admin calls are disabled: start the server with an admin token")
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), admin_token.encode()):
            raise HTTPException(401, "admin call needs a valid 'Authorization: Bearer <token>' header")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "tasks": len(predictor.specs())}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks")
    async def list_tasks():
        specs = predictor.specs()
        return {"tasks": [{"name": n, "kind": s.kind, "labels": s.labels, "label_range": s.label_range,
                           "text_fields": len(s.text_fields), "layers_run": predictor.layers_run([n])}
                          for n, s in sorted(specs.items())]}

    @app.post("/v1/predict")
    async def predict(req: PredictRequest):
        if len(req.inputs) > limits.max_inputs:
            raise HTTPException(413, f"too many inputs: {len(req.inputs)} (limit {limits.max_inputs} per request)")
        for i, item in enumerate(req.inputs):
            for field, text in (("text", item.text), ("text_pair", item.text_pair)):
                if text is not None and len(text) > limits.max_text_chars:
                    raise HTTPException(422, f"inputs.{i}.{field}: {len(text)} characters (limit {limits.max_text_chars})")
        with_pair = [x.text_pair is not None for x in req.inputs]
        if any(with_pair) and not all(with_pair):
            raise HTTPException(422, "inputs mix single texts and text pairs: send them in separate requests")
        pairs = all(with_pair)
        snapshot = predictor.snapshot()  # validated against, and run with, this version of the task set
        specs = predictor.specs(snapshot)
        if req.tasks is None:
            tasks = sorted(n for n, s in specs.items() if (len(s.text_fields) == 2) == pairs)
            if not tasks:
                raise HTTPException(422, f"no task takes {'text pairs' if pairs else 'single texts'}")
        else:
            tasks = list(dict.fromkeys(req.tasks))
            unknown = [t for t in tasks if t not in specs]
            if unknown:
                raise HTTPException(404, f"unknown task(s): {', '.join(unknown)} (serving: {', '.join(sorted(specs))})")
            wrong = [t for t in tasks if (len(specs[t].text_fields) == 2) != pairs]
            if wrong:
                need = "text_pair" if not pairs else "a single text (no text_pair)"
                raise HTTPException(422, f"task(s) {', '.join(wrong)} need {need} for every input")
        texts = [x.text for x in req.inputs]
        results = await batcher.submit(texts, [x.text_pair for x in req.inputs] if pairs else None, tasks, snapshot)
        for t in tasks:
            task_count.labels(t).inc(len(texts))
        return {"tasks": tasks, "results": results}

    @app.put("/v1/tasks/{name}")
    async def put_task(name: str, body: PutTask, request: Request):
        _admin(request)
        if not isinstance(predictor, MergedPredictor):
            raise HTTPException(409, "this server does not serve a bundle; tasks cannot be changed")
        loop = asyncio.get_running_loop()
        async with admin_lock:
            try:
                pkg = await loop.run_in_executor(None, load_package, body.source, body.task or name)
                if pkg.spec.name != name:
                    raise BundleError(f"the package is for task {pkg.spec.name!r}, not {name!r}")
                existed = name in predictor.specs()
                entry = await loop.run_in_executor(None, predictor.put, pkg)
            except (BundleError, FileNotFoundError) as e:
                raise HTTPException(400, str(e)) from None
        log.info("task %s %s", name, "updated" if existed else "added")
        return {"task": name, "action": "updated" if existed else "added", "entry": entry}

    @app.delete("/v1/tasks/{name}")
    async def delete_task(name: str, request: Request):
        _admin(request)
        if not isinstance(predictor, MergedPredictor):
            raise HTTPException(409, "this server does not serve a bundle; tasks cannot be changed")
        async with admin_lock:
            if name not in predictor.specs():
                raise HTTPException(404, f"unknown task: {name}")
            await asyncio.get_running_loop().run_in_executor(None, predictor.remove, name)
        log.info("task %s removed", name)
        return {"task": name, "action": "removed"}

    return app
