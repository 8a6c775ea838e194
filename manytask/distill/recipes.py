"""A BAM study as configuration: shared data and model, the training settings per kind of run,
and the recipes — each a student kind with an optional teacher or initialisation recipe.

Recipes refer to each other by name, so Single→Multi→Single→Multi is three lines:
``S→M`` learns from ``Single``, ``S→M→S`` from ``S→M``, ``S→M→S→M`` from ``S→M→S``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import ValidationError, field_validator, model_validator

from manytask.config import ModelConfig, TaskEntry, TrainConfig, check_task_entries, first_error, load_model
from manytask.tasks import StrictModel


class Recipe(StrictModel):
    name: str
    student: Literal["single", "multi", "finetune"]  # one model per task, one model for all, or per-task fine-tuning
    teacher: Optional[str] = None  # recipe whose predictions the student learns from
    init: Optional[str] = None  # finetune: recipe whose model is fine-tuned on each task
    init_checkpoint: Literal["last", "best"] = "last"  # finetune: the trained model, or the task's best dev checkpoint
    train: dict[str, Any] = {}  # overrides of the student kind's training settings, e.g. {batching: mixed}
    slice_mode: Optional[Literal["heads", "sbl"]] = None  # train the tasks' slices so (else they are only scored)
    only: Optional[list[str]] = None  # single and finetune students: train these tasks only (default: all)
    auxiliary: bool = False  # learn the tasks' auxiliary label sets (else the study's `auxiliary:` entries are unused)
    aux_weight: Optional[float] = None  # with auxiliary: every auxiliary label set's weight (default: each entry's)
    schedule: Literal["linear", "constant"] = "linear"  # teacher annealing, or a constant lambda
    lam: float = 0.0
    temperature: Optional[float] = None  # default: the study's distill.temperature

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.student == "finetune" and not self.init:
            raise ValueError(f"recipe {self.name!r}: a finetune student needs 'init' (the recipe to fine-tune)")
        if self.student != "finetune" and self.init:
            raise ValueError(f"recipe {self.name!r}: 'init' is for finetune students only")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"recipe {self.name!r}: lam must be between 0 and 1")
        if self.only is not None and self.student == "multi":
            raise ValueError(f"recipe {self.name!r}: 'only' is for single and finetune students (a multi student "
                             "learns every task of the study)")
        try:
            TrainConfig.model_validate({**TrainConfig().model_dump(), **self.train})
        except ValidationError as e:
            raise ValueError(f"recipe {self.name!r}: train: {first_error(e)}") from None
        return self

    def training(self, base: TrainConfig) -> TrainConfig:
        """The student kind's training settings with this recipe's overrides."""
        return TrainConfig.model_validate({**base.model_dump(), **self.train})

    @property
    def slug(self) -> str:
        s = self.name.replace("→", "-to-").replace("+", "-plus-").replace("λ", "lambda")
        return re.sub(r"[^A-Za-z0-9._-]+", "", s.replace(" ", "-")).strip("-").lower() or "recipe"


FINETUNE_LR = 1e-5


class StudyDistill(StrictModel):
    temperature: float = 1.0


class StudyConfig(StrictModel):
    name: str = "bam"
    seeds: list[int] = [1, 2, 3]
    data_seed: int = 0
    glue_dir: Optional[str] = None
    missing_glue: Literal["skip", "error"] = "skip"
    silver_cache: Optional[str] = None  # where auxiliary silver labels are cached (see RunConfig)
    tasks: list[TaskEntry]
    model: ModelConfig = ModelConfig()
    single: TrainConfig = TrainConfig()
    multi: TrainConfig = TrainConfig(layerwise_lr_decay=0.9)
    # per-task fine-tuning after multi-task training: the single-task settings with lr 1e-5 (BAM §5),
    # unless keys given here say otherwise
    finetune: Optional[TrainConfig] = None
    distill: StudyDistill = StudyDistill()
    recipes: list[Recipe]
    baselines: list[str] = ["Single", "Multi"]  # each recipe is compared with these, paired by seed
    comparisons: list[tuple[str, str]] = []  # further pairs [recipe, other] the report must test
    # Holm–Bonferroni over every test in the report (all comparisons x columns), or within each comparison
    holm_family: Literal["report", "comparison"] = "report"
    trace: Optional[str] = None  # recipe whose dev score is followed over training (first seed), for the plot
    trace_evals: int = 6

    @field_validator("tasks")
    @classmethod
    def _one_entry_per_task(cls, v: list[TaskEntry]) -> list[TaskEntry]:
        return check_task_entries(v)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("give one or more distinct seeds")
        return v

    @model_validator(mode="after")
    def _finetune_from_single(self) -> "StudyConfig":
        given = self.finetune.model_dump(include=self.finetune.model_fields_set) if self.finetune else {}
        self.finetune = TrainConfig.model_validate({**self.single.model_dump(), "lr": FINETUNE_LR, **given})
        return self

    @model_validator(mode="after")
    def _references(self) -> "StudyConfig":
        names = [r.name for r in self.recipes]
        if len(set(names)) != len(names):
            raise ValueError("recipe named twice")
        slugs = [r.slug for r in self.recipes]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"recipe names map to the same directory: {slugs}")
        tasks = {t.name for t in self.tasks}
        for r in self.recipes:
            for ref in (r.teacher, r.init):
                if ref is not None and ref not in names:
                    raise ValueError(f"recipe {r.name!r} refers to unknown recipe {ref!r} (known: {', '.join(names)})")
            unknown = sorted(set(r.only or []) - tasks)
            if unknown:
                raise ValueError(f"recipe {r.name!r}: 'only' names unknown task(s) {', '.join(unknown)}")
        for ref in [*self.baselines, *([self.trace] if self.trace else []), *(x for pair in self.comparisons for x in pair)]:
            if ref not in names:
                raise ValueError(f"{ref!r} is not a recipe (known: {', '.join(names)})")
        order(self.recipes)  # raises on a cycle
        return self

    def recipe(self, name: str) -> Recipe:
        return next(r for r in self.recipes if r.name == name)


def order(recipes: list[Recipe]) -> list[Recipe]:
    """Recipes in an order where every teacher and init comes first."""
    by_name = {r.name: r for r in recipes}
    done: list[Recipe] = []
    visiting: set[str] = set()

    def visit(r: Recipe) -> None:
        if r in done:
            return
        if r.name in visiting:
            raise ValueError(f"recipes refer to each other in a cycle through {r.name!r}")
        visiting.add(r.name)
        for ref in (r.teacher, r.init):
            if ref:
                visit(by_name[ref])
        visiting.discard(r.name)
        done.append(r)

    for r in recipes:
        visit(r)
    return done


def load_study(path: Union[str, Path], overrides: Optional[list[str]] = None, saved: bool = False) -> StudyConfig:
    return load_model(StudyConfig, path, overrides, what="study config", saved=saved)


def dump_study(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
