"""The flexible multi-task pipeline (Wei et al., 2022) as configuration.

Per task: full fine-tuning (the baseline), partial fine-tuning of the top k layers over the frozen
trunk for each k searched, compression of the deepest searched branch into fewer layers by
distillation, and "mixed" selection; then one bundle of the selected branches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import field_validator, model_validator

from manytask.config import ModelConfig, TaskEntry, TrainConfig, check_task_entries, load_model
from manytask.tasks import StrictModel


class SearchConfig(StrictModel):
    ks: list[int] = [1, 2, 3]  # top layers fine-tuned over the frozen trunk
    per_task: dict[str, list[int]] = {}

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("give one or more layer counts, each at least 1")
        return sorted(set(v))

    def for_task(self, task: str) -> list[int]:
        return sorted(set(self.per_task.get(task, self.ks)))


class CompressConfig(StrictModel):
    """Distil the teacher branch (k_t layers) into each of ``to`` (< k_t) layers, initialised from the
    teacher branch's bottom layers, on the teacher's split depth.

    ``teacher: best`` (the paper: "we always determine k first") takes the partial fine-tuning with the
    best dev score as the teacher; ``deepest`` takes the deepest k searched."""

    to: list[int] = [1, 2]
    teacher: Literal["best", "deepest"] = "best"
    temperature: float = 2.0
    schedule: Literal["constant", "linear"] = "constant"  # linear = teacher annealing (BAM), an option
    lam: float = 0.5  # weight of the gold loss when constant
    train: Optional[TrainConfig] = None  # default: the partial fine-tuning settings


class MixedConfig(StrictModel):
    """Per task, keep adding task layers while each added layer brings at least ``delta`` points.

    ``per_layer`` is the paper's rule; ``next_step`` is manytask's earlier one (one rung at a time,
    stop at the first rung that gains less than delta in all); see ``select_mixed``."""

    delta: float = 0.5  # points of dev score per added task layer
    rule: Literal["per_layer", "next_step"] = "per_layer"


class FlexConfig(StrictModel):
    name: str = "flex"
    seed: int = 1
    data_seed: int = 0
    glue_dir: Optional[str] = None
    missing_glue: Literal["skip", "error"] = "skip"
    tasks: list[TaskEntry]
    model: ModelConfig = ModelConfig()
    full: Optional[TrainConfig] = TrainConfig()  # the full fine-tuning baseline; null to skip it
    partial: TrainConfig = TrainConfig(lr=1e-4)
    search: SearchConfig = SearchConfig()
    compress: CompressConfig = CompressConfig()
    mixed: MixedConfig = MixedConfig()
    bundle: str = "mixed"  # which selection the bundle holds: mixed, partial (best k), or kd-N

    @field_validator("tasks")
    @classmethod
    def _one_entry_per_task(cls, v: list[TaskEntry]) -> list[TaskEntry]:
        return check_task_entries(v)

    @model_validator(mode="after")
    def _check(self) -> "FlexConfig":
        unknown = set(self.search.per_task) - {t.name for t in self.tasks}
        if unknown:
            raise ValueError(f"search.per_task names unknown task(s): {', '.join(sorted(unknown))}")
        if self.bundle not in ("mixed", "partial") and not (
                self.bundle.startswith("kd-") and self.bundle[3:].isdigit() and int(self.bundle[3:]) in self.compress.to):
            raise ValueError(f"bundle: {self.bundle!r} is not mixed, partial, or kd-N with N in compress.to")
        return self


def probe_config(cfg: "FlexConfig", tasks=None):
    """A run config over the flex config's tasks (all, or those named), its data and model settings: what
    reads their data the way the pipeline's runs do (same caps and re-splits)."""
    from manytask.config import RunConfig

    entries = [t for t in cfg.tasks if tasks is None or t.name in tasks]
    return RunConfig(seed=cfg.seed, data_seed=cfg.data_seed, glue_dir=cfg.glue_dir, missing_glue=cfg.missing_glue,
                     tasks=entries, model=cfg.model)


def load_flex(path: Union[str, Path], overrides: Optional[list[str]] = None, saved: bool = False) -> FlexConfig:
    return load_model(FlexConfig, path, overrides, what="flex config", saved=saved)


def dump_flex(cfg: FlexConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
