"""Commands for runs: train, eval, predict, submit, targets, tasks; MeTaL's ensembles and weak supervision."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from manytask import api
from manytask.cli.common import DeviceOpt, GlueDir, SetOpt, command, fail, setup
from manytask.report.tables import results_table, slices_table


def _specs(run) -> dict:
    return {s.name: s for s in run.specs()}


def _draws_line(summary: dict) -> str:
    draws = ", ".join(f"{t}: {d['examples']} examples in {d['batches']} batches" for t, d in summary["draws"].items())
    return f"drawn — {draws}; {summary['examples_per_s']:.1f} train examples/s"


@command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML recipe"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory to create (or resume)"),
    set_: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="stop after this step with a checkpoint "
                                          "(resume later with --resume): training in time-limited slots"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Train a single- or multi-task model into a run directory, then print its dev scores.

    Several processes: `torchrun --nproc-per-node N -m manytask.cli train ...` (data parallel)."""
    setup(glue_dir, device)
    from manytask import runtime
    from manytask.config import load_config
    from manytask.runs import train_run

    own = config is None  # resuming with the run's own saved config
    if config is None:
        if not resume:
            fail("give --config (or --resume with an existing run in --out)")
        config = out / "config.yaml"
    summary = train_run(load_config(config, set_, saved=own), out, resume=resume, stop_at=stop_at)
    if not runtime.is_main():
        return  # rank 0 reports
    if "stopped" in summary:
        typer.echo(f"stopped at step {summary['stopped']} of {summary['total_steps']}; continue with --resume")
        return
    run = api.Run.open(out)
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


@command(name="eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="run directory (or an ensemble directory)"),
    best: bool = typer.Option(False, "--best", help="score each task with its own best checkpoint (then the "
                              "average is not one model's) instead of the last checkpoint"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Print and save (RUN/eval.json) the dev metrics of a run: by default the last checkpoint, one model."""
    setup(glue_dir, device)
    run = api.open_run(run_dir)
    result = run.evaluate("best" if best else "last")  # an ensemble: always its members' best checkpoints
    label = "dev, each task's best checkpoint (not one model)" if best else "dev, last checkpoint (one model)"
    if not isinstance(run, api.Run):
        label = f"dev, ensemble ({run.mode}) of {len(run.members)} runs, each member's best checkpoint"
        if result.get("optimistic"):
            typer.echo("note: the weights come from the dev set scored here, so this score is optimistic")
    typer.echo(results_table(result, _specs(run), label=label))
    for member, value in result.get("members", {}).items():
        typer.echo(f"member {member}: {100 * value:.1f}")
    sliced = slices_table(result, _specs(run))
    if sliced:
        typer.echo(sliced)
    typer.echo(f"saved {run_dir / 'eval.json'}")


@command()
def predict(
    run_dir: Path = typer.Argument(..., help="run directory (or an ensemble directory)"),
    task: str = typer.Option(..., "--task", "-t"),
    input: Path = typer.Option(..., "--input", "-i", help="CSV, TSV or JSONL with the task's text column(s)"),
    output: Path = typer.Option(..., "--output", "-o", help=".jsonl, or .tsv"),
    text_fields: Optional[str] = typer.Option(None, help="comma-separated text columns, if not the task's"),
    id_field: Optional[str] = typer.Option(None, help="column to copy as the id (default: line number)"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write predictions (label and probabilities, or score) for every line of a file."""
    setup(glue_dir, device)
    from manytask.evaluation.submit import predict_file

    fields = [f.strip() for f in text_fields.split(",")] if text_fields else None
    n = predict_file(api.open_run(run_dir), task, input, output, fields, id_field)
    typer.echo(f"wrote {n} predictions to {output}: one per record of {input} ({n} records)")


@command()
def submit(
    run_dir: Path = typer.Argument(..., help="run directory (or an ensemble directory)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the GLUE leaderboard files"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write test-set predictions: GLUE leaderboard files (CoLA.tsv, ..., AX.tsv) and <task>.tsv for user tasks."""
    setup(glue_dir, device)
    from manytask.evaluation.submit import write_submission

    written, notes = write_submission(api.open_run(run_dir), out)
    for n in notes:
        typer.echo(f"note: {n}")
    typer.echo(f"wrote {', '.join(written)} to {out}" if written else f"wrote nothing to {out}: see the notes above")


@command()
def targets(
    run_dir: Path = typer.Argument(..., help="a trained run: the teacher"),
    out: Path = typer.Option(..., "--out", "-o", help="target-store directory (one file per task)"),
    last: bool = typer.Option(False, "--last", help="use the last checkpoint instead of each task's best"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Write a teacher's predictions on its training examples, for a student's `distill.targets`."""
    setup(glue_dir, device)
    written = api.Run.open(run_dir).write_targets(out, "last" if last else "best")
    typer.echo(f"wrote {', '.join(p.name for p in written)} to {out}")


@command()
def tasks(glue_dir: Optional[Path] = GlueDir) -> None:
    """List GLUE tasks and which of their files are present."""
    setup(glue_dir)
    from manytask.tasks import GLUE_TASKS

    typer.echo(f"GLUE directory: {api.resolve_glue_dir(glue_dir)}")
    for name, splits in api.glue_files(glue_dir).items():
        spec = GLUE_TASKS[name]
        parts = [f"{n}{'' if present else ' (missing)'}" for n, present in splits.items()]
        typer.echo(f"  {spec.title:6s} {spec.kind:14s} {', '.join(parts)}")


@command()
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
    setup(glue_dir, device)
    ens = api.ensemble(runs, task, out, mode)
    result = ens.evaluate()
    if result.get("optimistic"):
        typer.echo("note: the weights come from the dev set scored here, so this score is optimistic "
                   "(members trained with `ensemble-members` are weighted on their own held-out parts)")
    typer.echo(results_table(result, _specs(ens), label=f"dev, ensemble ({mode})"))
    for member, value in result["members"].items():
        typer.echo(f"member {member}: {100 * value:.1f}")
    for member, per in result.get("versus_members", {}).items():
        for split, v in per.items():
            typer.echo(f"ensemble vs {member} ({split}): accuracy {v['accuracy_diff']:+.1f} points; only the ensemble "
                       f"right on {v['only_ensemble_right']}, only the member on {v['only_member_right']}; McNemar "
                       f"exact p={v['p']:.3f}, Holm over members {v['p_holm']:.3f}")
    typer.echo(f"ensemble: {out / 'ensemble.json'}, {out / 'eval.json'}")


@command(name="ensemble-members")
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
    setup(glue_dir, device)
    ens = api.ensemble_members(config, task, k, out, fraction, mode)
    result = ens.evaluate()
    typer.echo(results_table(result, _specs(ens), label=f"dev, ensemble of {k} ({mode})"))
    for member, value in result["members"].items():
        held = result["members_heldout"].get(member, {})
        own = ", ".join(f"own held-out {100 * m[ens.specs()[0].primary]:.1f}" for m in held.values())
        typer.echo(f"member {member}: dev {100 * value:.1f}" + (f" ({own})" if own else ""))


@command()
def weak(
    config: Path = typer.Option(..., "--config", "-c", help="YAML: task, unlabeled file, labeling functions"),
    out: Path = typer.Option(..., "--out", "-o"),
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Labeling functions + Snorkel's label model: probabilistic labels for unlabelled text, as a teacher-target
    store any recipe can train on, with the functions' coverage, overlaps, conflicts and accuracy."""
    setup(glue_dir, device)
    report = api.weak(config, out, glue_dir)
    typer.echo((out / "weak.md").read_text())
    typer.echo(f"weak labels: {out / 'train.jsonl'}, targets: {out / 'targets'}; {report['examples']} examples")
