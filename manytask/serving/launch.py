"""Start the HTTP server: check every option, score a reduced precision against fp32 (refusing one that costs a
task more than the tolerance), then run uvicorn with the guarded protocol — in one process or several."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from manytask.bundles import Bundle
from manytask.config import RunConfig
from manytask.errors import ConfigError
from manytask.runtime import resolve_device
from manytask.serving.app import check_token
from manytask.serving.factory import ENV, build_app
from manytask.serving.plan import score_precisions
from manytask.serving.precision import PrecisionError, compare

log = logging.getLogger(__name__)


def precision_table(scores: dict) -> str:
    precisions = list(scores)
    lines = ["| task | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions)]
    for task in sorted(scores[precisions[0]]):
        cells = [f"{100 * scores[p][task]['score']:.1f}" if "score" in scores[p].get(task, {}) else "unscored"
                 for p in precisions]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checked_scores(bundle: Bundle, precision: str, tolerance: float, force: bool, echo=log.info,
                   device: str = "cpu", runtime: str = "torch") -> dict:
    """fp32 and ``precision`` dev scores of every task, on the device and runtime that will serve (cached with
    the bundle); a task that loses more than ``tolerance`` points, or that cannot be scored here (its dev data
    is not on this machine), refuses the precision unless forced."""
    glue_dir = RunConfig(tasks=["sst2"]).resolved_glue_dir()
    if runtime == "onnx":
        from manytask.serving.onnx_runtime import OnnxModel
        from manytask.serving.precision import dev_scores

        key = f"onnx-{precision}"
        scores = {"fp32": dev_scores(bundle, bundle.merged_model().eval(), "fp32", glue_dir),
                  key: dev_scores(bundle, OnnxModel(bundle, precision), key, glue_dir)}
        precision = key
    else:
        scores = score_precisions(bundle, precision, glue_dir, resolve_device(device), tolerance, echo)
    echo(precision_table(scores))
    unscored = {t: v["unscored"] for t, v in scores[precision].items() if "unscored" in v}
    if unscored and not force:
        raise PrecisionError(f"{precision} cannot be checked against fp32 for: "
                             + "; ".join(f"{t} ({why})" for t, why in sorted(unscored.items()))
                             + " (put the dev data where the config says, or --force to serve it unchecked)")
    worse = compare(scores["fp32"], scores[precision], tolerance)
    if worse and not force:
        raise PrecisionError(f"{precision} costs more than {tolerance} points on: {'; '.join(worse)} "
                             "(--force to serve it anyway)")
    return scores


def run_bundle(run_dir: Path, echo=log.info) -> Path:
    """A run served as one model: its bundle (RUN/bundle), made once from the run's last checkpoint."""
    target = Path(run_dir) / "bundle"
    if not (target / "manifest.json").exists():
        Bundle.from_run(run_dir, target)
        echo(f"bundled {run_dir} into {target}")
    return target


def bundle_of(source: Path, echo=log.info) -> Path:
    """A bundle directory as given, or a run's own bundle (made once)."""
    source = Path(source)
    if (source / "config.yaml").exists() and not (source / "manifest.json").exists():
        return run_bundle(source, echo)
    return source


def read_token(token_file: Optional[Path]) -> Optional[str]:
    """The admin token: from a file, else $MANYTASK_ADMIN_TOKEN; 16 characters or more, or none."""
    token = os.environ.get("MANYTASK_ADMIN_TOKEN")
    if token_file is not None:
        if not token_file.is_file():
            raise ConfigError(f"admin token file not found: {token_file}")
        token = token_file.read_text()
    try:
        return check_token(token)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def serve(bundle: Optional[Path], runs: dict[str, str], limits: dict, *, host: str = "127.0.0.1", port: int = 8000,
          token: Optional[str] = None, source_roots: tuple = (), device: str = "cpu", precision: str = "fp32",
          tolerance: float = 0.5, force: bool = False, workers: int = 1, watch_interval: float = 2.0,
          body_timeout: float = 30.0, header_timeout: float = 10.0, max_idle_connections: int = 512,
          timeout_keep_alive: int = 5, docs: bool = True, cors_origins: tuple = (), runtime: str = "torch",
          compile: bool = False, echo=log.info) -> None:
    """Serve a bundle (or a run, bundled once) or separate runs (``runs``: task -> run directory) over HTTP.
    ``limits["max_in_flight"]`` bounds requests being answered; ``max_idle_connections`` the connections with
    none in flight (the oldest is closed beyond it)."""
    import uvicorn

    from manytask.serving.protocol import GuardedH11Protocol

    missing_roots = [str(r) for r in source_roots if not Path(r).is_dir()]
    if missing_roots:
        raise ConfigError(f"--source-root: not a directory: {', '.join(missing_roots)}")
    if (bundle is None) == (not runs):
        raise ConfigError("give either a bundle or one or more --run TASK=RUN_DIR")
    if workers < 1:
        raise ConfigError("--workers: 1 or more")
    if runtime not in ("torch", "onnx"):
        raise ConfigError(f"--runtime {runtime!r}: torch or onnx")
    if runtime == "onnx" and (bundle is None or device != "cpu" or precision not in ("fp32", "int8") or compile):
        raise ConfigError("--runtime onnx serves a bundle on the CPU in fp32 or int8 (ONNX Runtime's quantiser), "
                          "without --compile")
    if compile and (bundle is None or precision in ("int8", "int8-channel", "auto")):
        raise ConfigError("--compile serves a bundle in fp32, bf16 or fp16 (int8 layers are not compiled)")
    if max_idle_connections < 1 or limits.get("max_in_flight", 1) < 1:
        raise ConfigError("--max-idle-connections and --limit-concurrency: 1 or more")
    bad_origins = [o for o in cors_origins if o != "*" and not o.startswith(("http://", "https://"))]
    if bad_origins:
        raise ConfigError(f"--cors-origin {bad_origins[0]!r}: an origin is scheme://host[:port], e.g. "
                          "https://app.example.com")
    options = {"bundle": None, "runs": runs, "device": device, "precision": precision,
               "source_roots": [str(r) for r in source_roots], "token": token, "body_timeout": body_timeout,
               "watch_interval": watch_interval, "dev_scores": None, "limits": limits, "docs": docs,
               "cors_origins": list(cors_origins), "runtime": runtime, "compile": compile}
    if bundle is not None:
        b = Bundle(bundle_of(bundle, echo))
        options["bundle"] = str(b.root.resolve())
        if precision != "fp32":
            options["dev_scores"] = checked_scores(b, precision, tolerance, force, echo, device, runtime)
        if precision == "auto":
            from manytask.serving.plan import load_plan, plan_table

            options["plan"] = load_plan(b, tolerance, resolve_device(device).type)
            echo(plan_table(options["plan"]))
    if workers > 1 and device != "cpu":
        app = None  # each worker builds its own on its GPU: the parent keeps no CUDA context
        options["slots"] = str(Path(tempfile.mkdtemp(prefix="manytask-serve-")) / "slots")
    else:
        app = build_app(options)  # also checks every argument before a worker starts
    os.environ["MANYTASK_HEADER_TIMEOUT"] = str(header_timeout)
    os.environ["MANYTASK_MAX_IDLE"] = str(max_idle_connections)
    GuardedH11Protocol.header_timeout = header_timeout
    GuardedH11Protocol.max_idle = max_idle_connections
    kw = {"host": host, "port": port, "log_level": "warning", "http": GuardedH11Protocol,
          "limit_concurrency": None, "timeout_keep_alive": timeout_keep_alive}
    if workers == 1:
        uvicorn.run(app, **kw)
    else:
        del app  # each worker builds its own
        os.environ[ENV] = json.dumps(options)
        uvicorn.run("manytask.serving.factory:build", factory=True, workers=workers, **kw)
