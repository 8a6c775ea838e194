"""Run a BAM study: for every seed, every recipe in dependency order — teachers, their target
stores, students, fine-tuning — then collect dev scores. Finished stages are reused, and an
interrupted run resumes from its last checkpoint, so a study can be resumed or given more seeds.

Layout: ``OUT/study.yaml``, ``OUT/seed-S/<recipe>/`` holding ``run/`` (a multi-task student) or
one run per task (``<task>/``), ``targets/`` when the recipe teaches, and ``scores.json`` when done.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from manytask.config import ConfigError, DistillConfig, RunConfig, TrainConfig, first_error
from manytask.data.loading import MissingData, load_tasks
from manytask.distill.recipes import Recipe, StudyConfig, dump_study, load_study, order
from manytask.distill.teacher import write_targets
from manytask.evaluation.scoring import summarize
from manytask.io import atomic_write_json, atomic_write_text
from manytask.runs import Run, train_run

log = logging.getLogger(__name__)

REPORT_ONLY = ("baselines", "comparisons", "holm_family")  # may change when a study is resumed or extended


def recipe_dir(out: Path, seed: int, recipe: Recipe) -> Path:
    return Path(out) / f"seed-{seed}" / recipe.slug


def run_dirs(out: Path, seed: int, recipe: Recipe, tasks: list[str]) -> dict[str, Path]:
    """Task -> the run directory that holds the recipe's model for it."""
    base = recipe_dir(out, seed, recipe)
    if recipe.student == "multi":
        return {t: base / "run" for t in tasks}
    return {t: base / t for t in tasks}


class Study:
    def __init__(self, cfg: StudyConfig, out: Path):
        self.cfg = cfg
        self.out = Path(out)
        self.tasks, self.skipped = self._present_tasks()

    def _base_config(self, seed: int, entries, train: TrainConfig) -> RunConfig:
        c = self.cfg
        return RunConfig(seed=seed, data_seed=c.data_seed, glue_dir=c.glue_dir, missing_glue=c.missing_glue,
                         tasks=entries, model=c.model.model_copy(deep=True), train=train.model_copy(deep=True),
                         silver_cache=c.silver_cache)

    def _present_tasks(self) -> tuple[list[str], list[str]]:
        """Tasks whose files are there (absent GLUE tasks are skipped, as in a single run)."""
        probe = self._base_config(self.cfg.seeds[0], self.cfg.tasks, self.cfg.multi)
        data, skipped = load_tasks(probe, with_train=False)
        return [d.name for d in data], skipped

    def entries(self, names: list[str], slice_mode: Optional[str] = None, auxiliary: bool = False,
                aux_weight: Optional[float] = None):
        """The study's task entries for these tasks; a recipe's ``slice_mode`` trains their slices, and
        ``auxiliary`` their auxiliary label sets (each at ``aux_weight`` when given)."""
        out = [e.model_copy(deep=True) for e in self.cfg.tasks if e.name in names]
        for e in out:
            if e.slices is not None:
                e.slices.mode = slice_mode or "eval"
            if not auxiliary:
                e.auxiliary = []
            for a in e.auxiliary:
                a.weight = a.weight if aux_weight is None else aux_weight
        return out

    # ---- one recipe, one seed ----------------------------------------------------------------
    def run_recipe(self, seed: int, recipe: Recipe) -> dict:
        done = recipe_dir(self.out, seed, recipe) / "scores.json"
        if done.exists():
            return json.loads(done.read_text())
        log.info("seed %d: recipe %s", seed, recipe.name)
        kind = {"single": self.cfg.single, "multi": self.cfg.multi, "finetune": self.cfg.finetune}[recipe.student]
        train = recipe.training(kind)
        distill = None
        if recipe.teacher:
            store = self.targets(seed, self.cfg.recipe(recipe.teacher))
            distill = DistillConfig(targets=str(store.resolve()), schedule=recipe.schedule, lam=recipe.lam,
                                    temperature=recipe.temperature or self.cfg.distill.temperature)
        tasks = [t for t in self.tasks if recipe.only is None or t in recipe.only]
        dirs = run_dirs(self.out, seed, recipe, tasks)
        groups = [tasks] if recipe.student == "multi" else [[t] for t in tasks]
        results, finals, specs = {}, {}, {}
        for names in groups:
            cfg = self._base_config(seed, self.entries(names, recipe.slice_mode, recipe.auxiliary, recipe.aux_weight),
                                    train)
            cfg.distill = distill
            if recipe.init:
                source = run_dirs(self.out, seed, self.cfg.recipe(recipe.init), names)[names[0]]
                cfg.model.init_from = str(source.resolve())
                cfg.model.init_checkpoint = recipe.init_checkpoint
            if recipe.name == self.cfg.trace and seed == self.cfg.seeds[0]:
                cfg.train.evals = self.cfg.trace_evals
            run_dir = dirs[names[0]]
            summary = train_run(cfg, run_dir, resume=(run_dir / "config.yaml").exists())
            # the run's own specs: a tagging task's tag set (and so its metrics) is known once it trained
            trained = {sp.name: sp for sp in Run.open(run_dir).specs()}
            for n in names:
                results[n] = summary["final"]["tasks"][n]
                finals[n] = str(run_dir.relative_to(self.out))
                specs[n] = trained[n]
        scores = {**summarize(results, specs), "primary_metric": {n: sp.primary for n, sp in specs.items()},
                  "runs": finals, "recipe": recipe.name, "seed": seed}
        atomic_write_json(done, scores)
        return scores

    def targets(self, seed: int, teacher: Recipe) -> Path:
        """The teacher recipe's target store for this seed, written once from its finished runs."""
        self.run_recipe(seed, teacher)
        store = recipe_dir(self.out, seed, teacher) / "targets"
        manifest = store / "manifest.json"
        if manifest.exists():
            return store
        written = {}
        taught = [t for t in self.tasks if teacher.only is None or t in teacher.only]
        for run_dir in dict.fromkeys(run_dirs(self.out, seed, teacher, taught).values()):
            for p in write_targets(run_dir, store, "last", {"recipe": teacher.name}):
                written[p.name] = str(run_dir.relative_to(self.out))
        atomic_write_json(manifest, {"recipe": teacher.name, "seed": seed, "files": written})
        return store

    def run(self, seeds: list[int], workers: int = 0, address: Optional[str] = None) -> dict:
        """Every (seed, recipe) stage, after the stages it learns from or starts from; in sequence, or
        fanned out on Ray (``workers`` local CPUs, or a cluster at ``address``)."""
        from manytask.fanout import run_graph

        stages = {}
        text = dump_study(self.cfg)
        for seed in seeds:
            for recipe in order(self.cfg.recipes):
                deps = [(seed, ref) for ref in (recipe.teacher, recipe.init) if ref]
                stages[(seed, recipe.name)] = (_stage, (text, str(self.out), seed, recipe.name), deps)
        results = run_graph(stages, workers, address)
        all_scores: dict = {}
        for (seed, name), scores in results.items():
            all_scores.setdefault(name, {})[seed] = scores
        return all_scores


def _stage(study_text: str, out: str, seed: int, recipe: str) -> dict:
    """One (seed, recipe) stage, in any process: the study is rebuilt from its saved text."""
    import yaml

    cfg = StudyConfig.model_validate(yaml.safe_load(study_text))
    study = Study(cfg, Path(out))
    return study.run_recipe(seed, cfg.recipe(recipe))


def prepare(cfg: StudyConfig, out: Path, seeds: Optional[list[int]] = None) -> StudyConfig:
    """Write (or check) OUT/study.yaml. A study is resumed or extended (more seeds, new recipes) only
    with the same data, model and training settings, and with its existing recipes unchanged."""
    out = Path(out)
    saved = out / "study.yaml"
    seeds = seeds or cfg.seeds
    if saved.exists():
        old = load_study(saved, saved=True)
        kept = {r.name: r for r in old.recipes}
        changed = [r.name for r in cfg.recipes if r.name in kept and r != kept[r.name]]
        if changed:
            raise ConfigError(f"{out} holds recipe(s) {', '.join(changed)} defined otherwise ({saved}); "
                              "rename them or use another --out")
        recipes = old.recipes + [r for r in cfg.recipes if r.name not in kept]
        report_only = {k: getattr(cfg, k) for k in REPORT_ONLY}  # what the report tests, not how runs train
        mine = cfg.model_copy(update={"seeds": old.seeds, "recipes": old.recipes, **{k: getattr(old, k) for k in REPORT_ONLY}})
        if dump_study(mine) != dump_study(old):
            raise ConfigError(f"{out} holds a study with other settings ({saved}); use another --out")
        merged = old.seeds + [s for s in seeds if s not in old.seeds]
        cfg = old.model_copy(update={"seeds": merged, "recipes": recipes, **report_only})
        try:  # the report settings must name recipes the study has
            StudyConfig.model_validate(cfg.model_dump())
        except ValidationError as e:
            raise ConfigError(f"{out}: {first_error(e)}") from None
    else:
        cfg = cfg.model_copy(update={"seeds": list(seeds)})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_study(cfg))
    return cfg


def run_study(cfg: StudyConfig, out: Path, seeds: Optional[list[int]] = None, workers: int = 0,
              address: Optional[str] = None) -> dict:
    cfg = prepare(cfg, out, seeds)
    study = Study(cfg, out)
    if not study.tasks:
        raise MissingData("no task of the study could be loaded")
    return study.run(seeds or cfg.seeds, workers, address)
