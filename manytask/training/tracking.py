"""Experiment tracking as trainer callbacks: TensorBoard, MLflow, Weights & Biases (``train.report_to``).

Each tracker is an optional extra, imported only when asked; without ``report_to`` a run writes TensorBoard
event files to RUN/tensorboard where TensorBoard is installed, and nothing otherwise. Trackers log what the
trainer emits: each objective's loss, the learning rate, lambda (teacher annealing), examples per second, and
per task its primary dev score with the dev average. Only rank 0 tracks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from manytask.errors import ConfigError

INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install mlflow", "wandb": "pip install wandb"}


class TrackingError(ConfigError):
    """A tracker that is asked for but not installed."""


def scalars(event: str, record: dict) -> dict[str, float]:
    """The numbers of a trainer event, under the names trackers show."""
    if event == "log":
        out = {f"loss/{k}": v for k, v in record.get("loss", {}).items()}
        out["lr"] = record["lr"]
        out["examples_per_s"] = record["examples_per_s"]
        if "lambda" in record:
            out["lambda"] = record["lambda"]
        return out
    if event == "eval":
        out = {f"dev/{k}": v for k, v in record.get("primary", {}).items()}
        if record.get("average") == record.get("average"):  # not nan
            out["dev/average"] = record["average"]
        return out
    return {}


class Tracker:
    def __call__(self, event: str, record: dict) -> None:
        values = scalars(event, record)
        if values:
            self.log(values, record["step"])
        if event == "end":
            self.close()

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class MLflow(Tracker):
    def __init__(self, run_dir: Path):
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=Path(run_dir).name)

    def log(self, values, step):
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def close(self):
        self.mlflow.end_run()


class Wandb(Tracker):
    def __init__(self, run_dir: Path):
        import wandb

        self.run = wandb.init(project="manytask", name=Path(run_dir).name, dir=str(run_dir), reinit=True)

    def log(self, values, step):
        self.run.log(values, step=step)

    def close(self):
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def trackers(report_to: Optional[list[str]], run_dir: Path) -> list[Tracker]:
    """The trackers a run asks for (``None``: TensorBoard where installed); one not installed is an error
    naming how to install it."""
    names = (["tensorboard"] if installed("tensorboard") else []) if report_to is None else list(report_to)
    out = []
    for name in dict.fromkeys(names):
        if not installed(name):
            raise TrackingError(f"train.report_to: {name} is not installed ({INSTALL[name]})")
        out.append(TRACKERS[name](run_dir))
    return out
