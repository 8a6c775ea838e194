"""Build the server's app from plain options: in the ``serve`` process, or in each worker process of
``serve --workers N`` (uvicorn imports ``build`` by name there; the options travel in $MANYTASK_SERVE)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from fastapi import FastAPI

ENV = "MANYTASK_SERVE"


def worker_device(device: str, slots: str, count: Optional[int] = None) -> str:
    """The GPU of the next worker process: the workers of ``serve --workers N`` take the visible GPUs in turn
    (a counter in the ``slots`` file, under a lock). A CPU, or one GPU, is every worker's."""
    import fcntl

    import torch

    if device not in ("auto", "cuda"):
        return device
    count = torch.cuda.device_count() if count is None else count
    if count < 2:
        return device
    with open(slots, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        taken = len(f.read())
        f.write("x")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
    return f"cuda:{taken % count}"


def build_app(options: dict) -> FastAPI:
    from manytask.bundles import Bundle
    from manytask.serving.app import Limits, create_app
    from manytask.serving.predictor import MergedPredictor, SeparatePredictor

    if options.get("bundle") and options.get("runtime") == "onnx":
        from manytask.serving.onnx_runtime import OnnxPredictor

        predictor = OnnxPredictor(Bundle(Path(options["bundle"])), options["precision"])
    elif options.get("bundle"):
        predictor = MergedPredictor(Bundle(Path(options["bundle"])), options["device"], options["precision"],
                                    options.get("plan"), options.get("compile", False))
    else:
        predictor = SeparatePredictor({t: Path(d) for t, d in options["runs"].items()}, options["device"],
                                      options["precision"])
    roots = [Path(r) for r in options["source_roots"]] or None
    return create_app(predictor, Limits(**options["limits"]), options.get("token"), roots,
                      body_timeout=options["body_timeout"], dev_scores=options.get("dev_scores"),
                      watch_interval=options["watch_interval"], docs=options.get("docs", True),
                      cors_origins=options.get("cors_origins", ()))


def build() -> FastAPI:
    """uvicorn's factory in each worker process (each takes its own GPU where there are several)."""
    options = json.loads(os.environ[ENV])
    if options.get("slots"):
        options["device"] = worker_device(options["device"], options["slots"])
    return build_app(options)
