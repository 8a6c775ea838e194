"""What every command shares: the app, common options, logging set-up, and the one error wrapper that prints a
user's mistake (any ``ManytaskError``, or a path the system refuses) as ``error: ...`` on one line, exit 2."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from manytask.errors import ManytaskError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and serve many NLU tasks on one shared encoder.")
bundle_app = typer.Typer(no_args_is_help=True, help="Change one task of a bundle; the others stay byte-identical.")
app.add_typer(bundle_app, name="bundle")

GlueDir = typer.Option(None, "--glue-dir", help="GLUE directory (default: $MANYTASK_GLUE_DIR, else ./data/glue)")
DeviceOpt = typer.Option(None, "--device", help="auto (a GPU when torch sees one), cpu, cuda, cuda:N or mps; "
                         "'auto' in configs follows it")
WorkersOpt = typer.Option(0, "--workers", help="run independent stages at once on a local Ray with this many CPUs "
                          "(pip install -e '.[cluster]'); 0: in sequence")
RayOpt = typer.Option(None, "--ray-address", help="join an existing Ray cluster (e.g. ray://head:10001 or auto)")
SetOpt = typer.Option([], "--set", help="override a key: --set train.lr=3e-5")


def setup(glue_dir: Optional[Path] = None, device: Optional[str] = None) -> None:
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports; the others warn
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    import transformers

    transformers.utils.logging.set_verbosity_error()  # the MiniLM checkpoint's unused pooler is expected
    transformers.utils.logging.disable_progress_bar()
    if glue_dir is not None:
        os.environ["MANYTASK_GLUE_DIR"] = str(glue_dir)
    if device is not None:
        os.environ["MANYTASK_DEVICE"] = device


def fail(message: str) -> None:
    """Print ``error: message`` on one line and exit 2."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def command(target: Optional[typer.Typer] = None, name: Optional[str] = None):
    """Register a command whose user errors print one line instead of a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ManytaskError as e:
                fail(str(e))
            except OSError as e:  # a path the user gave: missing, unreadable, not writable
                fail(f"{e.strerror or type(e).__name__}: {e.filename}" if e.filename else str(e))
        (target or app).command(name)(run)
        return run
    return wrap


def seeds_list(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3")
        return None
