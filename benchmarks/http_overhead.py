"""What one request costs the server beyond the model: the same single-input request answered three ways, at
one request at a time (median of many):

- the predictor alone (tokenise, forward, answers as JSON-ready dicts) — the model's cost;
- the ASGI app in-process (``httpx.ASGITransport``: FastAPI's parsing and validation, the guard, metrics, the
  micro-batcher and its thread hop, response building) — minus the model, the app's overhead, broken down by
  ``cProfile`` over the event loop's thread (the model runs in the batcher's thread, so it is not in it);
- over HTTP on loopback (uvicorn with the serve command's protocol, in another process; a keep-alive client) —
  minus the app, the HTTP layer's cost.

    .venv/bin/python benchmarks/http_overhead.py runs/demo/bundle      # on a quiet machine
    writes benchmarks/results/http_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import manytask as mt  # noqa: E402
from serve_load import MANYTASK, free_port, wait_healthy  # noqa: E402

# where a function's time goes, by the module or name it belongs to (first match wins)
PARTS = [
    ("waiting for the model's thread (the event loop idle)", ("select.epoll", "selectors.py")),
    ("request parsing and validation (JSON, pydantic)", ("fastapi/routing.py:request_body_to_args",
                                                         "fastapi/dependencies/utils.py", "json/decoder.py",
                                                         "pydantic", "starlette/requests.py")),
    ("response building (encoding to JSON)", ("fastapi/encoders.py", "fastapi/routing.py:serialize_response",
                                              "starlette/responses.py", "json/encoder.py")),
    ("micro-batcher and thread hop", ("manytask/serving/batcher.py", "concurrent/futures", "asyncio/queues.py")),
    ("guard and metrics", ("manytask/serving/guard.py", "prometheus_client")),
]


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def breakdown(stats: pstats.Stats, requests: int) -> dict[str, float]:
    """ms per request of each part: the own time of the functions each part names (their callees that belong to
    no part land in "other")."""
    out = {name: 0.0 for name, _ in PARTS}
    out["other (asyncio, starlette routing, the handler's own code)"] = 0.0
    for (file, _, func), (_, _, own, _, _) in stats.stats.items():
        where = f"{file}:{func}"
        for name, keys in PARTS:
            if any(k in where for k in keys):
                out[name] += own
                break
        else:
            out["other (asyncio, starlette routing, the handler's own code)"] += own
    return {k: 1e3 * v / requests for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--text", default="A gem of a film, warm and funny.")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/http_overhead.json")
    args = p.parse_args()
    from manytask.serving.app import Limits, create_app
    from manytask.serving.predictor import MergedPredictor

    bundle = mt.Bundle(args.bundle)
    predictor = MergedPredictor(bundle)
    tasks = sorted(n for n, s in predictor.specs().items() if not s.pair)
    body = {"inputs": [{"text": args.text}], "tasks": tasks}
    median_ms(lambda: predictor.predict([args.text], None, tasks), 20)  # warm-up
    model_ms = median_ms(lambda: predictor.predict([args.text], None, tasks), args.requests)

    app = create_app(predictor, Limits(max_wait_ms=0.0))

    async def asgi(profile: cProfile.Profile) -> list[float]:
        """Warm-up, then timed requests, then profiled ones: one app lifetime (its batcher cannot restart)."""
        times = []
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
                for phase in ("warm-up", "timed", "profiled"):
                    for _ in range(20 if phase == "warm-up" else args.requests):
                        start = time.perf_counter()
                        if phase == "profiled":
                            profile.enable()
                        r = await c.post("/v1/predict", json=body)
                        if phase == "profiled":
                            profile.disable()
                        if phase == "timed":
                            times.append(time.perf_counter() - start)
                        assert r.status_code == 200, r.text
        return times

    profile = cProfile.Profile()
    app_ms = 1e3 * statistics.median(asyncio.run(asgi(profile)))
    parts = breakdown(pstats.Stats(profile), args.requests)

    port = free_port()
    server = subprocess.Popen([*MANYTASK, "serve", args.bundle, "--port", str(port), "--watch-interval", "0",
                               "--max-wait-ms", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "MANYTASK_ADMIN_TOKEN": ""})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, timeout=300)
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(20):
                c.post("/v1/predict", json=body)
            http_ms = median_ms(lambda: c.post("/v1/predict", json=body).raise_for_status(), args.requests)
    finally:
        server.terminate()
        server.wait(timeout=60)
    info = mt.cpu_info()
    rows = [("model (predictor: tokenise, forward, answers)", model_ms),
            ("app beyond the model (FastAPI, guard, batcher, response)", app_ms - model_ms),
            ("HTTP beyond the app (uvicorn/h11, sockets, the client's own work)", http_ms - app_ms)]
    print(f"\n{args.bundle}: one input, tasks {', '.join(tasks)}; median of {args.requests} requests one at a time; "
          f"CPU {info.get('model')} ({info.get('cores')} cores)")
    print("| part | ms per request | share |\n|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.2f} | {100 * v / http_ms:.0f}% |")
    print(f"| total over HTTP | {http_ms:.2f} | 100% |")
    print("\nthe app's own time by part (cProfile, event-loop thread; ms per request):\n| part | ms |\n|---|---|")
    for name, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {v:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bundle": args.bundle, "tasks": tasks, "cpu": info, "requests": args.requests,
                               "model_ms": model_ms, "app_ms": app_ms, "http_ms": http_ms, "app_parts_ms": parts},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
