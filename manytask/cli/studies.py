"""Commands for studies: a BAM study, the flexible-serving pipeline, and their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from manytask import api
from manytask.cli.common import DeviceOpt, GlueDir, RayOpt, SetOpt, WorkersOpt, command, seeds_list, setup


@command()
def bam(
    config: Path = typer.Option(..., "--config", "-c", help="study YAML (tasks, model, recipes)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (default: runs/<name>)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated, e.g. 1,2,3 (default: the config's)"),
    set_: list[str] = SetOpt,
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayOpt,
    device: Optional[str] = DeviceOpt,
    glue_dir: Optional[Path] = GlueDir,
) -> None:
    """Run a BAM study: teachers, target stores, students, fine-tuning; then write the report.

    Finished stages are reused, so the same command resumes an interrupted study or adds seeds.
    """
    setup(glue_dir, device)
    rep = api.bam(config, out, seeds_list(seeds), set_, workers, ray_address)
    out = rep["out"]
    typer.echo(rep["markdown"])
    typer.echo(f"report: {out / 'report.md'}, {out / 'report.json'}, " + ", ".join(rep["plots"]))


@command()
def report(run_dir: Path = typer.Argument(..., help="a study (`manytask bam`) or flex run (`manytask flex`)")) -> None:
    """Rebuild the report of a BAM study or a flex run from what its runs wrote."""
    setup()
    rep = api.write_report(run_dir)
    typer.echo(rep["markdown"])
    typer.echo(f"report: {run_dir / 'report.md'}, " + ", ".join(rep["plots"]))


@command()
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
    setup(glue_dir, device)
    done = api.flex_pipeline(config, out, set_, workers, ray_address)
    out, result = done["out"], done["result"]
    typer.echo(done["report"]["markdown"])
    for s in result["skipped"]:
        typer.echo(f"note: {s}")
    typer.echo(f"bundle: {result['bundle']} ({done['bundle_choice']}); report: {out / 'report.md'}, {out / 'flex.png'}")
