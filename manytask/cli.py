"""The ``manytask`` command: train, eval, predict, submit, tasks, targets, bam, report, flex, bundle, serve."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and evaluate many NLU tasks on one shared BERT-family encoder.")

GlueDir = typer.Option(None, "--glue-dir", help="GLUE directory (default: $MANYTASK_GLUE_DIR, else ./data/glue)")
DeviceOpt = typer.Option(None, "--device", help="auto (a GPU when torch sees one), cpu, cuda, cuda:N or mps; "
                         "'auto' in configs follows it")


WorkersOpt = typer.Option(0, "--workers", help="run independent stages at once on a local Ray with this many CPUs "
                          "(pip install -e '.[cluster]'); 0: in sequence")
RayOpt = typer.Option(None, "--ray-address", help="join an existing Ray cluster (e.g. ray://head:10001 or auto)")


def _setup(glue_dir: Optional[Path], device: Optional[str] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    import transformers

    transformers.utils.logging.set_verbosity_error()  # the MiniLM checkpoint's unused pooler is expected
    transformers.utils.logging.disable_progress_bar()
    if glue_dir is not None:
        os.environ["MANYTASK_GLUE_DIR"] = str(glue_dir)
    if device is not None:
        os.environ["MANYTASK_DEVICE"] = device


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _specs(run) -> dict:
    return {s.name: s for s in run.specs()}


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML recipe"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory to create (or resume)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set train.lr=3e-5"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="stop after this step with a checkpoint "
                                          "(resume later with --resume): training in time-limited slots"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Train a single- or multi-task model into a run directory, then print its dev scores.

    Several processes: `torchrun --nproc-per-node N -m manytask.cli train ...` (data parallel)."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError, load_config
    from manytask.data.loading import MissingData
    from manytask.data.readers import DataError
    from manytask.report.tables import results_table, slices_table
    from manytask.runs import Run, train_run

    own = config is None  # resuming with the run's own saved config
    if config is None:
        if not resume:
            _fail("give --config (or --resume with an existing run in --out)")
        config = out / "config.yaml"
    try:
        cfg = load_config(config, set_, saved=own)
        summary = train_run(cfg, out, resume=resume, stop_at=stop_at)
    except (ConfigError, DataError, MissingData, FileNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    from manytask.training import distributed

    if not distributed.is_main():
        return  # rank 0 reports
    if "stopped" in summary:
        typer.echo(f"stopped at step {summary['stopped']} of {summary['total_steps']}; continue with --resume")
        return
    run = Run.open(out)
    specs = _specs(run)
    typer.echo(_draws_line(summary))
    final = {**summary["final"], "titles": summary["titles"]}
    typer.echo(results_table(final, specs, label="dev, last step (one model)"))
    if slices_table(final, specs):
        typer.echo(slices_table(final, specs))
    if any(b["step"] != summary["total_steps"] for b in summary["best"].values()):
        best = run.evaluate("best")
        typer.echo(results_table(best, specs, label="dev, each task's best checkpoint (not one model)"))
    for s in summary["skipped"]:
        typer.echo(f"note: {s}")


def _draws_line(summary: dict) -> str:
    draws = ", ".join(f"{t}: {d['examples']} examples in {d['batches']} batches" for t, d in summary["draws"].items())
    return f"drawn — {draws}; {summary['examples_per_s']:.1f} train examples/s"


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="run directory"),
    best: bool = typer.Option(False, "--best", help="score each task with its own best checkpoint (then the "
                              "average is not one model's) instead of the last checkpoint"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Print and save (RUN/eval.json) the dev metrics of a run: by default the last checkpoint, one model."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError
    from manytask.ensemble import Ensemble
    from manytask.report.tables import results_table, slices_table
    from manytask.runs import Run

    try:
        run = Ensemble(run_dir) if Ensemble.is_ensemble(run_dir) else Run.open(run_dir)
        result = run.evaluate("best" if best else "last")
    except (FileNotFoundError, ConfigError) as e:
        _fail(str(e))
        return
    label = "dev, each task's best checkpoint (not one model)" if best else "dev, last checkpoint (one model)"
    if isinstance(run, Ensemble):
        label = f"dev, ensemble ({run.mode}) of {len(run.members)} runs"
    typer.echo(results_table(result, _specs(run), label=label))
    for member, value in result.get("members", {}).items():
        typer.echo(f"member {member}: {100 * value:.1f}")
    sliced = slices_table(result, _specs(run))
    if sliced:
        typer.echo(sliced)
    typer.echo(f"saved {run_dir / 'eval.json'}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="run directory"),
    task: str = typer.Option(..., "--task", "-t"),
    input: Path = typer.Option(..., "--input", "-i", help="CSV, TSV or JSONL with the task's text column(s)"),
    output: Path = typer.Option(..., "--output", "-o", help=".jsonl, or .tsv"),
    text_fields: Optional[str] = typer.Option(None, help="comma-separated text columns, if not the task's"),
    id_field: Optional[str] = typer.Option(None, help="column to copy as the id (default: line number)"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write predictions (label and probabilities, or score) for every line of a file."""
    _setup(glue_dir, device)
    from manytask.data.readers import DataError
    from manytask.ensemble import Ensemble
    from manytask.evaluation.submit import predict_file
    from manytask.runs import Run

    fields = [f.strip() for f in text_fields.split(",")] if text_fields else None
    try:
        source = Ensemble(run_dir) if Ensemble.is_ensemble(run_dir) else Run.open(run_dir)
        n = predict_file(source, task, input, output, fields, id_field)
    except (KeyError, DataError, FileNotFoundError) as e:
        _fail(str(e.args[0]) if isinstance(e, KeyError) else str(e))
        return
    typer.echo(f"wrote {n} predictions to {output}: one per record of {input} ({n} records)")


@app.command()
def submit(
    run_dir: Path = typer.Argument(..., help="run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the GLUE leaderboard files"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write test-set predictions: GLUE leaderboard files (CoLA.tsv, ..., AX.tsv) and <task>.tsv for user tasks."""
    _setup(glue_dir, device)
    from manytask.data.readers import DataError
    from manytask.ensemble import Ensemble
    from manytask.evaluation.submit import write_submission
    from manytask.runs import Run

    try:
        source = Ensemble(run_dir) if Ensemble.is_ensemble(run_dir) else Run.open(run_dir)
        written, notes = write_submission(source, out)
    except (FileNotFoundError, DataError) as e:
        _fail(str(e))
        return
    for n in notes:
        typer.echo(f"note: {n}")
    typer.echo(f"wrote {', '.join(written)} to {out}" if written else f"wrote nothing to {out}: see the notes above")


@app.command()
def ensemble(
    runs: list[Path] = typer.Argument(..., help="two or more run directories that share the task"),
    task: str = typer.Option(..., "--task", "-t"),
    out: Path = typer.Option(..., "--out", "-o", help="ensemble directory (eval, predict and submit take it)"),
    mode: str = typer.Option("mean", help="mean of probabilities, vote (majority; mean for regression), or "
                             "weighted (by each member's dev score)"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Combine runs into an ensemble for one task; prints each member's and the ensemble's dev score."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError
    from manytask.ensemble import Ensemble
    from manytask.report.tables import results_table

    try:
        ens = Ensemble.create(runs, task, out, mode)
        result = ens.evaluate()
    except (ConfigError, FileNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo(results_table(result, {s.name: s for s in ens.specs()}, label=f"dev, ensemble ({mode})"))
    for member, value in result["members"].items():
        typer.echo(f"member {member}: {100 * value:.1f}")
    for member, per in result.get("versus_members", {}).items():
        for split, v in per.items():
            typer.echo(f"ensemble vs {member} ({split}): accuracy {v['accuracy_diff']:+.1f} points; only the ensemble "
                       f"right on {v['only_ensemble_right']}, only the member on {v['only_member_right']}; McNemar "
                       f"exact p={v['p']:.3f}, Holm over members {v['p_holm']:.3f}")
    typer.echo(f"ensemble: {out / 'ensemble.json'}, {out / 'eval.json'}")


@app.command("ensemble-members")
def ensemble_members(
    config: Path = typer.Option(..., "--config", "-c", help="the run's YAML recipe"),
    task: str = typer.Option(..., "--task", "-t"),
    k: int = typer.Option(5, "--k", help="members"),
    out: Path = typer.Option(..., "--out", "-o"),
    fraction: float = typer.Option(0.2, help="share of the training set each member holds out"),
    mode: str = typer.Option("mean"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Train k members on k seeded re-splits of the task's training set (each scored on its own held-out part
    and on the official dev set), then their ensemble (OUT/ensemble), scored on the official dev set."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError, load_config
    from manytask.data.loading import MissingData
    from manytask.data.readers import DataError
    from manytask.ensemble import train_members
    from manytask.report.tables import results_table

    try:
        ens = train_members(load_config(config), task, k, out, fraction, mode)
        result = ens.evaluate()
    except (ConfigError, DataError, MissingData, FileNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo(results_table(result, {s.name: s for s in ens.specs()}, label=f"dev, ensemble of {k} ({mode})"))
    for member, value in result["members"].items():
        held = result["members_heldout"].get(member, {})
        own = ", ".join(f"own held-out {100 * m[ens.specs()[0].primary]:.1f}" for m in held.values())
        typer.echo(f"member {member}: dev {100 * value:.1f}" + (f" ({own})" if own else ""))


@app.command()
def weak(
    config: Path = typer.Option(..., "--config", "-c", help="YAML: task, unlabeled file, labeling functions"),
    out: Path = typer.Option(..., "--out", "-o"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Labeling functions + Snorkel's label model: probabilistic labels for unlabelled text, as a teacher-target
    store any recipe can train on, with the functions' coverage, overlaps, conflicts and accuracy."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError, RunConfig
    from manytask.data.loading import MissingData
    from manytask.data.readers import DataError
    from manytask.weak import load_weak, run_weak

    try:
        report = run_weak(load_weak(config), out, RunConfig(tasks=["sst2"]).resolved_glue_dir())
    except (ConfigError, DataError, MissingData, FileNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo((out / "weak.md").read_text())
    typer.echo(f"weak labels: {out / 'train.jsonl'}, targets: {out / 'targets'}; {report['examples']} examples")


@app.command()
def tasks(glue_dir: Optional[Path] = GlueDir) -> None:
    """List GLUE tasks and which of their files are present."""
    _setup(glue_dir)
    from manytask.config import RunConfig
    from manytask.tasks import GLUE_TASKS

    root = RunConfig(tasks=["sst2"]).resolved_glue_dir()
    typer.echo(f"GLUE directory: {root}")
    for spec in GLUE_TASKS.values():
        base = spec.split_root(root)
        parts = [f"{n}{'' if (base / s.path).is_file() else ' (missing)'}" for n, s in spec.splits.items()]
        typer.echo(f"  {spec.title:6s} {spec.kind:14s} {', '.join(parts)}")


@app.command()
def targets(
    run_dir: Path = typer.Argument(..., help="a trained run: the teacher"),
    out: Path = typer.Option(..., "--out", "-o", help="target-store directory (one file per task)"),
    last: bool = typer.Option(False, "--last", help="use the last checkpoint instead of each task's best"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write a teacher's predictions on its training examples, for a student's `distill.targets`."""
    _setup(glue_dir, device)
    from manytask.distill.teacher import write_targets

    try:
        written = write_targets(run_dir, out, "last" if last else "best")
    except FileNotFoundError as e:
        _fail(str(e))
        return
    typer.echo(f"wrote {', '.join(p.name for p in written)} to {out}")


def _seeds(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3")
        return None


@app.command()
def bam(
    config: Path = typer.Option(..., "--config", "-c", help="study YAML (tasks, model, recipes)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (default: runs/<name>)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set multi.lr=1e-4"),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayOpt,
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Run a BAM study: teachers, target stores, students, fine-tuning; then write the report.

    Finished stages are reused, so the same command resumes an interrupted study or adds seeds.
    """
    _setup(glue_dir, device)
    from manytask.config import ConfigError
    from manytask.data.loading import MissingData
    from manytask.data.readers import DataError
    from manytask.distill.recipes import load_study
    from manytask.distill.store import TargetError
    from manytask.distill.study import run_study
    from manytask.report.bam import write_report

    try:
        cfg = load_study(config, set_)
        out = out or Path("runs") / cfg.name
        run_study(cfg, out, _seeds(seeds), workers, ray_address)
        rep = write_report(out)
    except (ConfigError, DataError, MissingData, TargetError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
        return
    typer.echo(rep["markdown"])
    typer.echo(f"report: {out / 'report.md'}, {out / 'report.json'}, " + ", ".join(rep["plots"]))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a study (`manytask bam`) or flex run (`manytask flex`)")) -> None:
    """Rebuild the report of a BAM study or a flex run from what its runs wrote."""
    _setup(None)
    from manytask.config import ConfigError

    try:
        if (run_dir / "study.yaml").exists():
            from manytask.report.bam import write_report

            rep = write_report(run_dir)
            plots = rep["plots"]
        elif (run_dir / "flex.yaml").exists() and (run_dir / "selection.json").exists():
            from manytask.flex.config import load_flex
            from manytask.report.flex import write_report as write_flex_report

            rep = write_flex_report(run_dir, load_flex(run_dir / "flex.yaml", saved=True).mixed.delta)
            plots = [str(run_dir / "flex.png")]
        else:
            _fail(f"{run_dir} is neither a study (study.yaml) nor a finished flex run (flex.yaml, selection.json)")
            return
    except (ConfigError, FileNotFoundError, KeyError) as e:
        _fail(str(e))
        return
    typer.echo(rep["markdown"])
    typer.echo(f"report: {run_dir / 'report.md'}, " + ", ".join(plots))


@app.command()
def flex(
    config: Path = typer.Option(..., "--config", "-c", help="flex YAML (tasks, search, compression, mixed delta)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default: runs/<name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set mixed.delta=1.0"),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayOpt,
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Partial fine-tuning (search k), branch compression, mixed selection; writes OUT/bundle and a report."""
    _setup(glue_dir, device)
    from manytask.config import ConfigError
    from manytask.data.loading import MissingData
    from manytask.data.readers import DataError
    from manytask.flex.config import load_flex
    from manytask.flex.pipeline import run_flex
    from manytask.report.flex import write_report
    from manytask.serving.bundle import BundleError

    try:
        cfg = load_flex(config, set_)
        out = out or Path("runs") / cfg.name
        result = run_flex(cfg, out, workers, ray_address)
        rep = write_report(out, cfg.mixed.delta)
    except (ConfigError, DataError, MissingData, BundleError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
        return
    typer.echo(rep["markdown"])
    for s in result["skipped"]:
        typer.echo(f"note: {s}")
    typer.echo(f"bundle: {result['bundle']} ({cfg.bundle}); report: {out / 'report.md'}, {out / 'flex.png'}")


bundle_app = typer.Typer(no_args_is_help=True, help="Change one task of a bundle; the others stay byte-identical.")
app.add_typer(bundle_app, name="bundle")


def _bundle_op(path: Path, op) -> None:
    from manytask.serving.bundle import Bundle, BundleError

    try:
        op(Bundle(path))
    except (BundleError, FileNotFoundError) as e:
        _fail(str(e))


@bundle_app.command("create")
def bundle_create(bundle: Path = typer.Argument(..., help="new bundle directory"),
                  source: Path = typer.Option(..., "--from", help="a trained run: its encoder becomes the trunk"),
                  checkpoint: str = typer.Option("last", help="last (one model), or best per task (frozen trunk only)")) -> None:
    """Make a bundle of every task of a run (a multi-task run, a BAM student, a MeTaL model...)."""
    from manytask.serving.bundle import Bundle, BundleError

    try:
        b = Bundle.from_run(source, bundle, checkpoint)
    except (BundleError, FileNotFoundError) as e:
        _fail(str(e))
        return
    m = b.manifest
    state = "frozen" if m["trunk"].get("frozen") else "fine-tuned"
    typer.echo(f"bundle {bundle}: trunk ({state} in {source}), tasks {', '.join(sorted(m['tasks']))}")


@bundle_app.command("list")
def bundle_list(bundle: Path = typer.Argument(...)) -> None:
    """Tasks of a bundle with their split depth and branch layers."""
    def show(b):
        m = b.manifest
        typer.echo(f"trunk {m['trunk']['sha256'][:12]}… ({m['trunk']['num_layers']} layers, {m['trunk']['pooling']} pooling)")
        for name, t in sorted(m["tasks"].items()):
            typer.echo(f"  {name:10s} {t['kind']:14s} split {t['split_depth']}, {t['layers']} layer(s)  {t['dir']}")
    _bundle_op(bundle, show)


def _put(bundle: Path, source: Path, task: Optional[str], replace: Optional[bool]) -> None:
    from manytask.serving.bundle import load_package

    def op(b):
        pkg = load_package(source, task)
        entry = b.put(pkg, replace=replace)
        typer.echo(f"{pkg.spec.name}: {entry['dir']} (split {entry['split_depth']}, {entry['layers']} layer(s))")
    _bundle_op(bundle, op)


@bundle_app.command("add")
def bundle_add(bundle: Path = typer.Argument(...),
               source: Path = typer.Option(..., "--from", help="a run directory, or a task package directory"),
               task: Optional[str] = typer.Option(None, "--task", help="which task of the run")) -> None:
    """Add a task that the bundle does not have yet."""
    _put(bundle, source, task, False)


@bundle_app.command("update")
def bundle_update(bundle: Path = typer.Argument(...),
                  source: Path = typer.Option(..., "--from", help="a run directory, or a task package directory"),
                  task: Optional[str] = typer.Option(None, "--task", help="which task of the run")) -> None:
    """Replace one task's branch and head."""
    _put(bundle, source, task, True)


@bundle_app.command("remove")
def bundle_remove(bundle: Path = typer.Argument(...), task: str = typer.Argument(...)) -> None:
    """Remove one task."""
    _bundle_op(bundle, lambda b: (b.remove(task), typer.echo(f"removed {task}")))


@app.command()
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
    limit_concurrency: int = typer.Option(256, help="connections and requests at once; beyond, 503"),
    timeout_keep_alive: int = typer.Option(5, help="seconds an idle keep-alive connection is kept"),
    header_timeout: float = typer.Option(10.0, help="seconds a connection has to send a complete request head"),
    body_timeout: float = typer.Option(30.0, help="seconds a request has to send its whole body"),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)"),
    device: str = typer.Option("cpu", "--device", help="cpu, auto, cuda, cuda:N or mps: where the trunk and branches run"),
    precision: str = typer.Option("fp32", help="fp32, bf16 (where native) or int8 (dynamic quantisation, CPU)"),
    tolerance: float = typer.Option(0.5, help="points of dev score a precision may cost any task"),
    force: bool = typer.Option(False, "--force", help="serve the precision even if it costs more than the tolerance"),
    workers: int = typer.Option(1, "--workers", help="server processes sharing the port (each holds the model)"),
    watch_interval: float = typer.Option(2.0, help="seconds between looks at the bundle for changes made by "
                                         "`manytask bundle` or another replica (0: never)"),
) -> None:
    """Serve a bundle over HTTP: /v1/predict, /v1/tasks, /healthz, /metrics, admin PUT/DELETE /v1/tasks/{name}."""
    _setup(None)
    import json as json_

    import torch
    import uvicorn

    from manytask.serving.app import check_token
    from manytask.serving.bundle import Bundle, BundleError
    from manytask.serving.factory import ENV, build_app
    from manytask.serving.protocol import GuardedH11Protocol

    if threads:
        torch.set_num_threads(threads)
    token = os.environ.get("MANYTASK_ADMIN_TOKEN")
    if admin_token_file is not None:
        if not admin_token_file.is_file():
            _fail(f"admin token file not found: {admin_token_file}")
        token = admin_token_file.read_text()
    try:
        token = check_token(token)
    except ValueError as e:
        _fail(str(e))
    missing_roots = [str(r) for r in source_root if not r.is_dir()]
    if missing_roots:
        _fail(f"--source-root: not a directory: {', '.join(missing_roots)}")
    if (bundle is None) == (not run):
        _fail("give either a bundle or one or more --run TASK=RUN_DIR")
    bad = [r for r in run if "=" not in r]
    if bad:
        _fail(f"--run {bad[0]!r}: expected TASK=RUN_DIR")
    if workers < 1:
        _fail("--workers: 1 or more")
    options = {"bundle": None, "runs": dict(r.split("=", 1) for r in run), "device": device, "precision": precision,
               "source_roots": [str(r) for r in source_root], "token": token, "body_timeout": body_timeout,
               "watch_interval": watch_interval, "dev_scores": None,
               "limits": {"max_inputs": max_inputs, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                          "max_text_chars": max_text_chars, "max_body_bytes": max_body_bytes}}
    try:
        if bundle is not None and (bundle / "config.yaml").exists() and not (bundle / "manifest.json").exists():
            bundle = _run_bundle(bundle)
        if bundle is not None:
            options["bundle"] = str(Bundle(bundle).root.resolve())
            if precision != "fp32":
                options["dev_scores"] = _checked_scores(Bundle(bundle), precision, tolerance, force)
        app_ = build_app(options)  # also checks every argument before a worker starts
    except (BundleError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    os.environ["MANYTASK_HEADER_TIMEOUT"] = str(header_timeout)
    GuardedH11Protocol.header_timeout = header_timeout
    kw = {"host": host, "port": port, "log_level": "warning", "http": GuardedH11Protocol,
          "limit_concurrency": limit_concurrency, "timeout_keep_alive": timeout_keep_alive}
    if workers == 1:
        uvicorn.run(app_, **kw)
    else:
        del app_  # each worker builds its own
        os.environ[ENV] = json_.dumps(options)
        uvicorn.run("manytask.serving.factory:build", factory=True, workers=workers, **kw)


@app.command()
def ask(
    source: Path = typer.Argument(..., help="a bundle, or a run (served as one model: bundled into RUN/bundle)"),
    texts: list[str] = typer.Argument(..., help="one or more texts"),
    pair: list[str] = typer.Option([], "--pair", help="the second text of each input (pair tasks), in order"),
    task: list[str] = typer.Option([], "--task", help="tasks to ask (default: every task that takes this input)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Ask a model a few inputs through the same predictor the server uses; prints one JSON line per input."""
    _setup(None)
    import json as json_

    from manytask.serving.bundle import Bundle, BundleError
    from manytask.serving.predictor import MergedPredictor

    if pair and len(pair) != len(texts):
        _fail(f"give one --pair per text ({len(texts)} texts, {len(pair)} pairs)")
    try:
        if (source / "config.yaml").exists() and not (source / "manifest.json").exists():
            source = _run_bundle(source)
        predictor = MergedPredictor(Bundle(source), device)
    except (BundleError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    specs = predictor.specs()
    tasks = task or sorted(n for n, s in specs.items() if s.pair == bool(pair))
    unknown = [t for t in tasks if t not in specs]
    if unknown or not tasks:
        _fail(f"unknown task(s) {unknown} (the model has {', '.join(sorted(specs))})" if unknown
              else f"no task takes {'text pairs' if pair else 'single texts'}")
    for text, answer_ in zip(texts, predictor.predict(texts, pair or None, tasks)):
        typer.echo(json_.dumps({"text": text, **answer_}))


def _checked_scores(bundle, precision: str, tolerance: float, force: bool) -> dict:
    """fp32 and ``precision`` dev scores of every task (cached in the bundle); a task that loses more than
    ``tolerance`` points refuses the precision unless forced."""
    from manytask.config import RunConfig
    from manytask.serving.precision import PrecisionError, compare, score_precisions

    scores = score_precisions(bundle, precision, RunConfig(tasks=["sst2"]).resolved_glue_dir())
    typer.echo(precision_table(scores), err=True)
    worse = compare(scores["fp32"], scores[precision], tolerance)
    if worse and not force:
        raise PrecisionError(f"{precision} costs more than {tolerance} points on: {'; '.join(worse)} "
                             "(--force to serve it anyway)")
    return scores


def precision_table(scores: dict) -> str:
    precisions = list(scores)
    lines = ["| task | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions)]
    for task in sorted(scores[precisions[0]]):
        cells = [f"{100 * scores[p][task]['score']:.1f}" if "score" in scores[p].get(task, {}) else "unscored"
                 for p in precisions]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@bundle_app.command("score")
def bundle_score(bundle: Path = typer.Argument(...),
                 precision: str = typer.Option("int8", help="bf16 or int8, scored beside fp32"),
                 glue_dir: Optional[Path] = GlueDir) -> None:
    """Every task's dev score in fp32 and another precision (cached in the bundle for `serve`)."""
    _setup(glue_dir)
    from manytask.config import RunConfig
    from manytask.serving.bundle import Bundle, BundleError
    from manytask.serving.precision import PrecisionError, score_precisions

    try:
        scores = score_precisions(Bundle(bundle), precision, RunConfig(tasks=["sst2"]).resolved_glue_dir())
    except (BundleError, PrecisionError, FileNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo(precision_table(scores))


def _run_bundle(run_dir: Path) -> Path:
    """A run served as one model: its bundle (RUN/bundle), made once from the run's last checkpoint."""
    from manytask.serving.bundle import Bundle

    target = run_dir / "bundle"
    if not (target / "manifest.json").exists():
        Bundle.from_run(run_dir, target)
        typer.echo(f"bundled {run_dir} into {target}", err=True)
    return target


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
