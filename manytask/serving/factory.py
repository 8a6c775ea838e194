"""Build the server's app from plain options: in the ``serve`` process, or in each worker process of
``serve --workers N`` (uvicorn imports ``build`` by name there; the options travel in $MANYTASK_SERVE)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI

ENV = "MANYTASK_SERVE"


def build_app(options: dict) -> FastAPI:
    from manytask.bundles import Bundle
    from manytask.serving.app import Limits, create_app
    from manytask.serving.predictor import MergedPredictor, SeparatePredictor

    if options.get("bundle"):
        predictor = MergedPredictor(Bundle(Path(options["bundle"])), options["device"], options["precision"])
    else:
        predictor = SeparatePredictor({t: Path(d) for t, d in options["runs"].items()}, options["device"],
                                      options["precision"])
    roots = [Path(r) for r in options["source_roots"]] or None
    return create_app(predictor, Limits(**options["limits"]), options.get("token"), roots,
                      body_timeout=options["body_timeout"], dev_scores=options.get("dev_scores"),
                      watch_interval=options["watch_interval"])


def build() -> FastAPI:
    """uvicorn's factory in each worker process."""
    return build_app(json.loads(os.environ[ENV]))
