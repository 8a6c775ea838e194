"""The ``manytask`` command: parsing, a call to the Python API (``manytask.api``), and formatting.

    training.py   train, eval, predict, submit, targets, tasks, ensemble, ensemble-members, weak
    studies.py    bam, report, flex
    serving.py    bundle create|list|add|update|remove|score, serve, ask
"""

from manytask.cli import serving, studies, training  # noqa: F401 (each registers its commands)
from manytask.cli.common import app

__all__ = ["app", "main"]


def main() -> None:  # console-script entry point
    app()
