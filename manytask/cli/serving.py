"""Commands for serving: change one task of a bundle, serve a bundle over HTTP, ask a model a few inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from manytask import api
from manytask.cli.common import GlueDir, bundle_app, command, fail, setup


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


@command(bundle_app, "create")
def bundle_create(bundle: Path = typer.Argument(..., help="new bundle directory"),
                  source: Path = typer.Option(..., "--from", help="a trained run: its encoder becomes the trunk"),
                  checkpoint: str = typer.Option("last", help="last (one model), or best per task (frozen trunk only)")) -> None:
    """Make a bundle of every task of a run (a multi-task run, a BAM student, a MeTaL model...)."""
    m = api.Run.open(source).to_bundle(bundle, checkpoint).manifest
    state = "frozen" if m["trunk"].get("frozen") else "fine-tuned"
    typer.echo(f"bundle {bundle}: trunk ({state} in {source}), tasks {', '.join(sorted(m['tasks']))}")


@command(bundle_app, "list")
def bundle_list(bundle: Path = typer.Argument(...)) -> None:
    """Tasks of a bundle with their split depth and branch layers."""
    m = api.Bundle(bundle).manifest
    typer.echo(f"trunk {m['trunk']['sha256'][:12]}… ({m['trunk']['num_layers']} layers, {m['trunk']['pooling']} pooling)")
    for name, t in sorted(m["tasks"].items()):
        typer.echo(f"  {name:10s} {t['kind']:14s} split {t['split_depth']}, {t['layers']} layer(s)  {t['dir']}")


def _put(bundle: Path, source: Path, task: Optional[str], replace: Optional[bool]) -> None:
    from manytask.bundles import load_package

    pkg = load_package(source, task)
    entry = api.Bundle(bundle).put(pkg, replace=replace)
    typer.echo(f"{pkg.spec.name}: {entry['dir']} (split {entry['split_depth']}, {entry['layers']} layer(s))")


@command(bundle_app, "add")
def bundle_add(bundle: Path = typer.Argument(...),
               source: Path = typer.Option(..., "--from", help="a run directory, or a task package directory"),
               task: Optional[str] = typer.Option(None, "--task", help="which task of the run")) -> None:
    """Add a task that the bundle does not have yet."""
    _put(bundle, source, task, False)


@command(bundle_app, "update")
def bundle_update(bundle: Path = typer.Argument(...),
                  source: Path = typer.Option(..., "--from", help="a run directory, or a task package directory"),
                  task: Optional[str] = typer.Option(None, "--task", help="which task of the run")) -> None:
    """Replace one task's branch and head."""
    _put(bundle, source, task, True)


@command(bundle_app, "remove")
def bundle_remove(bundle: Path = typer.Argument(...), task: str = typer.Argument(...)) -> None:
    """Remove one task."""
    api.Bundle(bundle).remove(task)
    typer.echo(f"removed {task}")


@command(bundle_app, "score")
def bundle_score(bundle: Path = typer.Argument(...),
                 precision: str = typer.Option("int8", help="bf16, int8, int8-channel or auto (a precision plan), "
                                               "scored beside fp32"),
                 tolerance: float = typer.Option(0.5, help="auto: points of dev score the plan may cost any task"),
                 glue_dir: Optional[Path] = GlueDir) -> None:
    """Every task's dev score in fp32 and another precision (cached in the bundle for `serve`); `auto` searches
    which layers may be int8 with every task within the tolerance and writes that plan to the bundle."""
    setup(glue_dir)
    from manytask.serving.launch import precision_table

    b = api.Bundle(bundle)
    typer.echo(precision_table(b.score(precision, glue_dir, tolerance)))
    if precision == "auto":
        from manytask.serving.plan import plan_table

        typer.echo(plan_table(b.plan(tolerance)))


@command()
def serve(
    bundle: Optional[Path] = typer.Argument(None, help="a bundle directory (from `manytask flex` or `bundle create`), "
                                            "or a run directory (served as one model: bundled into RUN/bundle)"),
    run: list[str] = typer.Option([], "--run", help="instead of a bundle: TASK=RUN_DIR, one full model per task "
                                  "(repeat; the baseline a bundle is measured against)"),
    host: str = typer.Option("127.0.0.1", help="interface; loopback unless you mean otherwise"),
    port: int = typer.Option(8000),
    max_batch: int = typer.Option(32, help="inputs per forward pass"),
    max_wait_ms: float = typer.Option(5.0, help="how long a request may wait for others to batch with"),
    max_inputs: int = typer.Option(64, help="inputs per request"),
    max_text_chars: int = typer.Option(10_000, help="characters per text"),
    max_body_bytes: int = typer.Option(1_000_000, help="request body size, counted as it arrives"),
    admin_token_file: Optional[Path] = typer.Option(None, help="file holding the admin bearer token, 16 characters "
                                                    "or more (else $MANYTASK_ADMIN_TOKEN; without one, admin calls "
                                                    "are refused)"),
    source_root: list[Path] = typer.Option([], "--source-root", help="directory that admin PUT sources must lie "
                                           "under (repeat; default: the bundle's parent directory)"),
    limit_concurrency: int = typer.Option(256, help="requests in flight at once; beyond, 503 (idle connections "
                                          "are limited apart, by --max-idle-connections)"),
    max_idle_connections: int = typer.Option(512, help="open connections with no request in flight; one more "
                                             "closes the oldest (half-open sockets cannot starve requests)"),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Swagger UI at /docs and the schema at /openapi.json"),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="a browser origin allowed to call the read and "
                                          "predict routes, e.g. https://app.example.com (repeat; none by default; "
                                          "admin routes never)"),
    timeout_keep_alive: int = typer.Option(5, help="seconds an idle keep-alive connection is kept"),
    header_timeout: float = typer.Option(10.0, help="seconds a connection has to send a complete request head"),
    body_timeout: float = typer.Option(30.0, help="seconds a request has to send its whole body"),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)"),
    device: str = typer.Option("cpu", "--device", help="cpu, auto, cuda, cuda:N or mps: where the trunk and branches run"),
    precision: str = typer.Option("fp32", help="fp32, bf16 (where native), int8 / int8-channel (dynamic quantisation "
                                  "per tensor / per channel, CPU) or auto (int8 on the layers a search finds within "
                                  "--tolerance for every task, the rest fp32; the plan is written to the bundle)"),
    tolerance: float = typer.Option(0.5, help="points of dev score a precision may cost any task"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile every layer of the bundle (fp32, bf16, "
                                 "fp16; the first requests of each new length pay for compiling)"),
    runtime: str = typer.Option("torch", "--runtime", help="torch, or onnx (the bundle exported once into ONNX "
                                "Runtime pieces; fp32 or int8 by ONNX Runtime's quantiser; tasks fixed while serving)"),
    force: bool = typer.Option(False, "--force", help="serve the precision even if it costs more than the tolerance"),
    workers: int = typer.Option(1, "--workers", help="server processes sharing the port (each holds the model)"),
    watch_interval: float = typer.Option(2.0, help="seconds between looks at the bundle for changes made by "
                                         "`manytask bundle` or another replica (0: never)"),
) -> None:
    """Serve a bundle over HTTP: the playground at /, /v1/predict, /v1/tasks, /v1/stats, /livez, /readyz, /metrics,
    /docs, admin PUT/DELETE /v1/tasks/{name}."""
    setup()
    import torch

    from manytask.serving.launch import read_token

    if threads:
        torch.set_num_threads(threads)
    bad = [r for r in run if "=" not in r]
    if bad:
        fail(f"--run {bad[0]!r}: expected TASK=RUN_DIR")
    limits = {"max_inputs": max_inputs, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
              "max_text_chars": max_text_chars, "max_body_bytes": max_body_bytes, "max_in_flight": limit_concurrency}
    api.serve(bundle, dict(r.split("=", 1) for r in run), limits=limits, host=host, port=port,
              token=read_token(admin_token_file), source_roots=tuple(source_root), device=device, precision=precision,
              tolerance=tolerance, force=force, workers=workers, watch_interval=watch_interval,
              body_timeout=body_timeout, header_timeout=header_timeout, max_idle_connections=max_idle_connections,
              timeout_keep_alive=timeout_keep_alive, docs=docs, cors_origins=tuple(cors_origin), runtime=runtime,
              compile=compile, echo=_echo_err)


@command()
def export(
    source: Path = typer.Argument(..., help="a run, or a bundle"),
    to: Path = typer.Option(..., "--to", help="directory to write"),
    format: str = typer.Option("hf", "--format", help="hf (a transformers model directory) or onnx"),
    task: Optional[str] = typer.Option(None, "--task", help="the task (hf: required; onnx: default every task of "
                                       "a bundle, the shared trunk once)"),
) -> None:
    """Export a task to a Hugging Face model directory, or a task or a whole bundle to ONNX (checked with ONNX
    Runtime against PyTorch)."""
    setup()
    meta = api.export_model(source, to, format, task)
    if format == "onnx":
        check = meta["check"]
        typer.echo(f"{to / 'model.onnx'}: tasks {', '.join(meta['tasks'])}; ONNX Runtime against PyTorch: largest "
                   f"difference {check['max_abs_difference']:.1e} (tolerance {check['tolerance']:.0e})")
    else:
        typer.echo(f"{to}: {meta['form']} ({meta['layers']} layers); load it with transformers"
                   + ("" if meta["form"] != "encoder+head" else f" and the head (see {to / 'README.md'})"))


@command()
def ask(
    source: Path = typer.Argument(..., help="a bundle, or a run (served as one model: bundled into RUN/bundle)"),
    texts: list[str] = typer.Argument(..., help="one or more texts"),
    pair: list[str] = typer.Option([], "--pair", help="the second text of each input (pair tasks), in order"),
    task: list[str] = typer.Option([], "--task", help="tasks to ask (default: every task that takes this input)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Ask a model a few inputs through the same path the server uses; prints one JSON line per input."""
    setup()
    from manytask.serving.launch import bundle_of

    if pair and len(pair) != len(texts):
        fail(f"give one --pair per text ({len(texts)} texts, {len(pair)} pairs)")
    model = api.Bundle(bundle_of(source, _echo_err)).model(device=device)
    inputs = list(zip(texts, pair)) if pair else list(texts)
    for text, answer in zip(texts, model.predict(inputs, tasks=task or None)):
        typer.echo(json.dumps({"text": text, **{t: p.to_json() for t, p in answer.items()}}))
