"""The HTTP server (FastAPI): predict with any set of a bundle's tasks, list them, change one at a time.

    GET    /                  the playground: a page to ask the tasks by hand (plain HTML and JavaScript)
    POST   /v1/predict        {"inputs": [{"text": ..., "text_pair": ...}], "tasks": [...]}
    GET    /v1/tasks          tasks, kinds, labels, layers, dev scores per precision
    GET    /v1/stats          precision, readiness, request counts (what the playground shows)
    PUT    /v1/tasks/{name}   {"source": "<task package or run dir>", "task": "<task in that run>"}  (admin)
    DELETE /v1/tasks/{name}   (admin)
    GET    /livez             the process answers; /readyz: the model is loaded and serving (503 before and
                              while shutting down; /healthz is its alias); /metrics (Prometheus); /docs (Swagger UI)

Every error is ``{"error": "<what is wrong>"}`` with a 4xx naming the fault (500 only for a failure of
the server itself, logged). Admin calls need ``Authorization: Bearer <token>`` (16 characters or more,
never logged); without a token they are refused. A PUT's ``source`` must lie under one of the server's
source roots, and the package is loaded and run on a probe input before anything is written. Browsers on
other origins may call the read and predict routes when their origin is listed (``cors_origins``); admin
routes are never opened to them (a preflight for PUT or DELETE is refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional, Sequence

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from manytask.bundles import BundleError, load_package
from manytask.serving.batcher import MicroBatcher
from manytask.serving.guard import RequestGuard
from manytask.serving.predictor import MergedPredictor, Predictor

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class Limits(BaseModel):
    max_inputs: int = 64  # per request
    max_text_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 32  # inputs per forward pass
    max_wait_ms: float = 5.0
    max_in_flight: int = 256  # requests being answered at once (idle connections are limited apart); beyond, 503


def _utf8(value: str) -> str:
    """Text must be encodable as UTF-8: a lone surrogate (valid JSON, not valid text) is refused here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {e.start})") from None
    return value


class InputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    text_pair: Optional[str] = None

    @field_validator("text")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return _utf8(v)

    @field_validator("text_pair")
    @classmethod
    def _pair(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _utf8(v)


TaskName = Annotated[str, Field(min_length=1, max_length=64)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[InputItem] = Field(min_length=1)
    tasks: Optional[list[TaskName]] = Field(default=None, min_length=1, max_length=256)

    @field_validator("tasks")
    @classmethod
    def _names(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        return None if v is None else [_utf8(t) for t in v]


class PredictResponse(BaseModel):
    """Per input, each task's answer: {"label", "probs"} (classification, multi-label), {"score"} (regression)
    or {"tokens", "tags", "probs"} (tagging)."""

    tasks: list[str]
    results: list[dict[str, dict]]


class PutTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=4096)  # a task package directory, or a run directory
    task: Optional[TaskName] = None  # the task in that run (default: the name in the URL)

    @field_validator("source", "task")
    @classmethod
    def _text(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _utf8(v)


Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=64)]  # a task name in a URL


class ErrorBody(BaseModel):
    error: str


def _errors(*codes: int) -> dict:
    why = {400: "bad request or unusable task package", 401: "missing or wrong admin token",
           403: "admin calls disabled, or source outside the source roots", 404: "unknown task",
           405: "method not allowed", 408: "request body not received in time",
           409: "this server's tasks cannot be changed (separate models, or the ONNX runtime)", 413: "body or inputs over the limits",
           422: "invalid request",
           500: "server failure (logged)", 503: "not ready, or too many requests in flight"}
    return {c: {"model": ErrorBody, "description": why[c]} for c in codes}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def check_token(token: Optional[str]) -> Optional[str]:
    """The admin token without surrounding whitespace; refused when shorter than 16 characters. An empty one
    (an unset variable exported as ``""``) means no token: admin calls are disabled."""
    if token is None or not token.strip():
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the admin token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)})")
    return token


def within(source: str, roots: list[Path]) -> Optional[Path]:
    """The source path, resolved, if it lies under one of the roots (nothing on disk is looked at)."""
    try:
        path = Path(source).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError):
        return None
    return path if any(path == r or path.is_relative_to(r) for r in roots) else None


async def _watch(predictor: MergedPredictor, interval: float, lock: asyncio.Lock) -> None:
    """Follow the bundle on disk: when its manifest changes, swap the changed tasks in (requests keep being
    answered by the snapshot they started with)."""
    manifest = predictor.bundle.root / "manifest.json"
    seen = None
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            stamp = manifest.stat().st_mtime_ns, manifest.stat().st_size
        except OSError:
            continue
        if stamp == seen:
            continue
        seen = stamp
        async with lock:
            try:
                changed = await loop.run_in_executor(None, predictor.refresh)
            except Exception as e:  # a half-written change is retried on the next look
                log.warning("bundle watch: %s", e)
                seen = None
                continue
        if changed:
            log.info("bundle changed on disk: %s", ", ".join(changed))


PROBES = ("/livez", "/readyz", "/healthz", "/metrics")  # answered however busy the server is


class BrowserCORS(CORSMiddleware):
    """CORS for the listed origins on the read and predict routes. An admin route (a task's URL) never carries
    a CORS header, and a preflight for it gets a 403: admin calls come from scripts, not pages."""

    def __init__(self, app, is_admin_path, **options):
        super().__init__(app, **options)
        self.is_admin_path = is_admin_path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.is_admin_path(scope["path"]):
            if scope["method"] == "OPTIONS" and any(k == b"access-control-request-method" for k, _ in scope["headers"]):
                return await _error(403, "admin routes are not open to browsers")(scope, receive, send)
            return await self.app(scope, receive, send)
        await super().__call__(scope, receive, send)


def playground_page() -> str:
    return resources.files("manytask.serving").joinpath("playground.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor, limits: Optional[Limits] = None, admin_token: Optional[str] = None,
               source_roots: Optional[list[Path]] = None, body_timeout: float = 30.0,
               dev_scores: Optional[dict[str, dict]] = None, watch_interval: float = 0.0, docs: bool = True,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """``dev_scores``: precision -> task -> {"score", "metric", "n"}, shown in ``GET /v1/tasks``.
    ``watch_interval``: seconds between looks at the bundle's manifest, to follow changes made by
    ``manytask bundle`` or another replica (0: never). ``docs``: Swagger UI at /docs (and /openapi.json).
    ``cors_origins``: browser origins allowed to call the read and predict routes (never the admin ones)."""
    limits = limits or Limits()
    admin_token = check_token(admin_token)
    if source_roots is None:
        source_roots = [predictor.bundle.root.parent] if isinstance(predictor, MergedPredictor) else []
    roots = [Path(r).expanduser().resolve() for r in source_roots]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = None
        if watch_interval > 0 and isinstance(predictor, MergedPredictor):
            watcher = asyncio.get_running_loop().create_task(_watch(predictor, watch_interval, admin_lock))
        app.state.ready, app.state.started = True, time.time()
        yield
        app.state.ready = False
        if watcher is not None:
            watcher.cancel()
        await app.state.batcher.stop()

    app = FastAPI(title="manytask", docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, lifespan=lifespan,
                  responses=_errors(400, 404, 405, 408, 413, 422, 500, 503))
    registry = CollectorRegistry()
    requests_total = Counter("manytask_requests_total", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("manytask_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("manytask_batch_size", "Inputs per forward pass", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    task_count = Counter("manytask_task_predictions_total", "Predictions per task", ["task"], registry=registry)
    batcher = MicroBatcher(predictor.predict, limits.max_batch, limits.max_wait_ms, on_batch=batch_sizes.observe)
    admin_lock = asyncio.Lock()
    app.state.predictor, app.state.batcher, app.state.ready, app.state.started = predictor, batcher, False, None
    counts: dict[str, dict[str, int]] = {}  # endpoint -> status -> requests (for /v1/stats)
    predictions: dict[str, int] = {}

    def observe(endpoint: str, status: int, seconds: float) -> None:
        latency.labels(endpoint).observe(seconds)
        requests_total.labels(endpoint, str(status)).inc()
        by_status = counts.setdefault(endpoint, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def is_admin_path(path: str) -> bool:
        return path.startswith("/v1/tasks/")

    def is_admin(method: str, path: str) -> bool:
        return method in ("PUT", "DELETE") and is_admin_path(path)

    app.add_middleware(RequestGuard, routes=app.router.routes, max_body_bytes=limits.max_body_bytes,
                       admin_token=admin_token, is_admin=is_admin, observe=observe, body_timeout=body_timeout,
                       max_in_flight=limits.max_in_flight, exempt=PROBES)
    if cors_origins:  # outermost: a preflight is answered here; PUT/DELETE and Authorization are never allowed
        app.add_middleware(BrowserCORS, is_admin_path=is_admin_path, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"], allow_credentials=False,
                           max_age=600)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if x != "body")
            parts.append(f"{loc or 'body'}: {e['msg']}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return HTMLResponse(playground_page())

    @app.get("/livez")
    async def livez():
        """The process is up and its event loop answers."""
        return {"status": "alive"}

    @app.get("/readyz", responses=_errors(503))
    async def readyz():
        """Ready for traffic: the bundle (and any precision check) is loaded and the server is not stopping."""
        tasks = len(predictor.specs())
        if not app.state.ready:
            return _error(503, "not ready: starting or stopping")
        if tasks == 0:
            return _error(503, "not ready: no task is served")
        return {"status": "ready", "tasks": tasks, "precision": predictor.weights}

    app.add_api_route("/healthz", readyz, methods=["GET"], responses=_errors(503), summary="Alias of /readyz")

    @app.get("/v1/stats")
    async def stats():
        """What the playground shows: precision, readiness, requests answered by route and status."""
        return {"precision": predictor.weights, "ready": bool(app.state.ready),
                "uptime_s": round(time.time() - app.state.started, 1) if app.state.started else 0.0,
                "requests": counts, "task_predictions": predictions}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    recorded: dict[str, dict] = {}

    def recorded_score(name: str, spec, entries: dict) -> dict:
        """The fp32 dev score a bundle's task package recorded when it was made (read once per package)."""
        bundle, entry = getattr(predictor, "bundle", None), entries.get(name)
        if entry is None:
            return {}
        if entry["dir"] not in recorded:
            try:
                info = json.loads((bundle.root / entry["dir"] / "task.json").read_text()).get("info", {})
            except (OSError, ValueError):
                info = {}
            recorded[entry["dir"]] = ({"fp32": {"score": info["dev_primary"], "metric": spec.primary,
                                                "source": "recorded in the task package"}}
                                      if isinstance(info.get("dev_primary"), (int, float)) else {})
        return recorded[entry["dir"]]

    @app.get("/v1/tasks")
    async def list_tasks():
        specs = predictor.specs()
        scores = dev_scores or {}
        plan = predictor.plan
        entries = predictor.bundle.manifest["tasks"] if getattr(predictor, "bundle", None) is not None else {}
        out = {"precision": predictor.weights,
               "tasks": [{"name": n, "kind": s.kind, "labels": s.labels, "label_range": s.label_range,
                          "text_fields": len(s.text_fields), "layers_run": predictor.layers_run([n]),
                          "dev": {**recorded_score(n, s, entries), **{p: v[n] for p, v in scores.items() if n in v}},
                          **({"plan": plan["tasks"].get(n, {})} if plan else {})}
                         for n, s in sorted(specs.items())]}
        if plan:
            out["plan"] = {"scheme": plan["scheme"], "tolerance": plan["tolerance"], "int8": plan["int8"],
                           "fp32": plan["fp32"]}
        return out

    @app.post("/v1/predict", responses={200: {"model": PredictResponse}, **_errors(404, 413, 422, 500, 503)})
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
            predictions[t] = predictions.get(t, 0) + len(texts)
        # already plain JSON types: encoded once, without FastAPI's generic encoder walking every number
        return JSONResponse({"tasks": tasks, "results": results})

    @app.put("/v1/tasks/{name}", responses=_errors(400, 401, 403, 409, 422, 500))
    async def put_task(name: Name, body: PutTask):
        if not isinstance(predictor, MergedPredictor):
            raise HTTPException(409, "this server cannot change its tasks (it serves separate models, or a fixed "
                                     "ONNX export of the bundle)")
        source = within(body.source, roots)
        if source is None:  # said the same way whether or not the path exists
            raise HTTPException(403, "source must lie under one of the server's source roots (--source-root)")
        loop = asyncio.get_running_loop()
        async with admin_lock:
            try:
                pkg = await loop.run_in_executor(None, load_package, source, body.task or name)
                if pkg.spec.name != name:
                    raise BundleError(f"the package is for task {pkg.spec.name!r}, not {name!r}")
                existed = name in predictor.specs()
                entry = await loop.run_in_executor(None, predictor.put, pkg)
            except (BundleError, OSError) as e:
                raise HTTPException(400, str(e) if isinstance(e, BundleError) else f"source unreadable: {e.strerror}") from None
        log.info("task %s %s", name, "updated" if existed else "added")
        return {"task": name, "action": "updated" if existed else "added", "entry": entry}

    @app.delete("/v1/tasks/{name}", responses=_errors(401, 403, 404, 409, 422, 500))
    async def delete_task(name: Name):
        if not isinstance(predictor, MergedPredictor):
            raise HTTPException(409, "this server cannot change its tasks (it serves separate models, or a fixed "
                                     "ONNX export of the bundle)")
        async with admin_lock:
            if name not in predictor.specs():
                raise HTTPException(404, f"unknown task: {name}")
            await asyncio.get_running_loop().run_in_executor(None, predictor.remove, name)
        log.info("task %s removed", name)
        return {"task": name, "action": "removed"}

    return app
