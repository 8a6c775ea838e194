"""Run the flexible multi-task pipeline: per task, full and partial fine-tuning, branch compression,
selection; then one bundle. Every run is an ordinary run directory, reused when finished.

    OUT/flex.yaml, OUT/<task>/{full, partial-k<K>, kd-<n>}/, OUT/<task>/partial-k<K>/targets/,
    OUT/selection.json, OUT/bundle/
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from manytask.bundles import Bundle, package_from_run
from manytask.config import ConfigError, DistillConfig, ModelConfig, RunConfig, TaskEntry, TrainConfig
from manytask.data.loading import load_tasks
from manytask.distill.teacher import write_targets
from manytask.encoders import adapter_class
from manytask.encoders.loading import encoder_config
from manytask.flex.config import FlexConfig, dump_flex, load_flex, probe_config
from manytask.io import atomic_write_json, atomic_write_text
from manytask.kinds import kind_of
from manytask.runs import Run, train_run

log = logging.getLogger(__name__)


def encoder_layers(model: ModelConfig) -> int:
    if model.random_init is not None:
        return model.random_init.num_layers
    config = encoder_config(model.encoder)
    return adapter_class(config).config_layers(config)


def best_partial(variants: dict[str, dict]) -> str:
    """The "w/o KD" setting: the partial fine-tuning with the best dev score (fewer layers on a tie).

    Its k is the task's k_t: the paper determines k first, and distils that branch."""
    partial = {k: v for k, v in variants.items() if k.startswith("partial-")}
    return max(partial, key=lambda k: (partial[k]["score"], -partial[k]["layers"]))


def select_mixed(variants: dict[str, dict], ladder: list[str], delta: float, rule: str = "per_layer") -> str:
    """The mixed setting of one task, from its ladder (fewest task layers first: KD-1 ... KD-(k_t − 1),
    then the teacher with k_t layers). Scores are fractions; ``delta`` is in points.

    ``per_layer`` (the paper, §4.2 and Appendix D): from the current choice, move to the first setting
    further up the ladder whose gain per added layer is at least ``delta``; a dip (KD-2 below KD-1) does
    not stop the walk. ``next_step`` (manytask's earlier rule): move one rung at a time while that rung
    adds at least ``delta`` points in all, and stop at the first that does not.
    """
    score = {n: 100 * variants[n]["score"] for n in ladder}
    layers = {n: variants[n]["layers"] for n in ladder}
    if rule == "next_step":
        chosen = ladder[0]
        for nxt in ladder[1:]:
            if score[nxt] - score[chosen] < delta:
                break
            chosen = nxt
        return chosen
    if rule != "per_layer":
        raise ValueError(f"unknown mixed-selection rule {rule!r} (per_layer, next_step)")
    i = 0
    while True:
        cur = ladder[i]
        nxt = next((j for j in range(i + 1, len(ladder)) if layers[ladder[j]] > layers[cur]
                    and (score[ladder[j]] - score[cur]) / (layers[ladder[j]] - layers[cur]) >= delta), None)
        if nxt is None:
            return cur
        i = nxt


class FlexPipeline:
    def __init__(self, cfg: FlexConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.L = encoder_layers(cfg.model)
        for t in cfg.tasks:
            bad = [k for k in cfg.search.for_task(t.name) if k > self.L]
            if bad:
                raise ConfigError(f"search: task {t.name!r} asks for {bad} layers; the encoder has {self.L}")

    def _run(self, entry: TaskEntry, path: Path, train: TrainConfig, freeze: bool, layers: int,
             split: Optional[int] = None, init: Optional[Path] = None, init_checkpoint: str = "last",
             distill: Optional[DistillConfig] = None) -> dict:
        c = self.cfg
        task = entry.model_copy(update={"branch_layers": layers, "split_depth": split})
        model = c.model.model_copy(update={"freeze_trunk": freeze, "init_from": str(init.resolve()) if init else None,
                                           "init_checkpoint": init_checkpoint})
        cfg = RunConfig(seed=c.seed, data_seed=c.data_seed, glue_dir=c.glue_dir, missing_glue="error", tasks=[task],
                        model=model, train=train.model_copy(deep=True), distill=distill)
        summary = train_run(cfg, path, resume=(path / "config.yaml").exists())
        best = summary["best"][entry.name]
        return {"run": str(path.relative_to(self.out)), "score": best["score"], "layers": layers,
                "split_depth": (self.L - layers) if split is None else split}

    def run_task(self, entry: TaskEntry) -> dict:
        c, name = self.cfg, entry.name
        base = self.out / name
        variants: dict[str, dict] = {}
        if c.full is not None:
            variants["full"] = self._run(entry, base / "full", c.full, freeze=False, layers=0)
            variants["full"].update(layers=self.L, split_depth=0)  # all L layers are the task's own
        ks = c.search.for_task(name)
        for k in ks:
            variants[f"partial-{k}"] = self._run(entry, base / f"partial-k{k}", c.partial, freeze=True, layers=k)
        comp = c.compress
        # the teacher: the selected partial fine-tuning (k_t = best k on dev), or the deepest k searched
        K = variants[best_partial(variants)]["layers"] if comp.teacher == "best" else max(ks)
        teacher = base / f"partial-k{K}"
        store = teacher / "targets"
        if not (store / f"{name}.safetensors").exists():
            write_targets(teacher, store, "best", {"role": "branch teacher", "layers": K})
        sizes = sorted(n for n in comp.to if n < K)
        spec = entry.resolve(Path.cwd())
        if not kind_of(spec).distillable:
            log.info("%s: a %s task is not compressed (its logits cannot be distilled)", name, spec.kind)
            sizes = []
        for n in sizes:
            distill = DistillConfig(targets=str(store.resolve()), schedule=comp.schedule, lam=comp.lam,
                                    temperature=comp.temperature, style="hinton")
            # the student sits on the teacher's split depth and starts from the teacher branch's bottom
            # n layers, from the checkpoint the teacher was scored (and its targets written) with
            variants[f"kd-{n}"] = self._run(entry, base / f"kd-{n}", comp.train or c.partial, freeze=True, layers=n,
                                            split=self.L - K, init=teacher, init_checkpoint="best", distill=distill)
        ladder = [f"kd-{n}" for n in sizes] + [f"partial-{K}"]
        # a KD-n row needs a branch of n layers; where the teacher has n layers or fewer, it is the teacher
        kd_rows = {f"kd-{n}": (f"kd-{n}" if n < K else f"partial-{K}") for n in comp.to}
        return {"variants": variants, "teacher": f"partial-{K}", "ladder": ladder,
                "selected": {"partial": best_partial(variants),
                             "mixed": select_mixed(variants, ladder, c.mixed.delta, c.mixed.rule), **kd_rows}}

    def present(self) -> list[TaskEntry]:
        data, self.skipped = load_tasks(probe_config(self.cfg), with_train=False)
        names = {d.name for d in data}
        return [t for t in self.cfg.tasks if t.name in names]

    def build_bundle(self, selection: dict) -> Path:
        root = self.out / "bundle"
        choice = self.cfg.bundle
        first = next(iter(selection.values()))
        if not (root / "manifest.json").exists():
            source = Run.open(self.out / first["variants"][first["selected"][choice]]["run"])
            trunk = source.model_for().share([])
            Bundle.create(root, trunk, source.tokenizer(), self.cfg.model.max_seq_length)
        bundle = Bundle(root)
        for task, sel in selection.items():
            variant = sel["variants"][sel["selected"][choice]]
            bundle.put(package_from_run(self.out / variant["run"], task))
        return root

    def run(self, workers: int = 0, address: Optional[str] = None) -> dict:
        """Every task's runs (in sequence, or fanned out on Ray one task a stage), then the bundle."""
        from manytask.fanout import run_graph

        text = dump_flex(self.cfg)
        stages = {e.name: (_flex_task, (text, str(self.out), e.name), []) for e in self.present()}
        selection = run_graph(stages, workers, address)
        atomic_write_json(self.out / "selection.json", {"encoder_layers": self.L, "tasks": selection,
                                                        "skipped": self.skipped})
        bundle = self.build_bundle(selection)
        return {"encoder_layers": self.L, "tasks": selection, "skipped": self.skipped, "bundle": str(bundle)}


def _flex_task(flex_text: str, out: str, task: str) -> dict:
    """One task's full, partial-k and KD runs, in any process: the pipeline is rebuilt from its saved text."""
    import yaml

    cfg = FlexConfig.model_validate(yaml.safe_load(flex_text))
    pipeline = FlexPipeline(cfg, Path(out))
    return pipeline.run_task(next(t for t in cfg.tasks if t.name == task))


def run_flex(cfg: FlexConfig, out: Path, workers: int = 0, address: Optional[str] = None) -> dict:
    out = Path(out)
    saved = out / "flex.yaml"
    if saved.exists() and dump_flex(load_flex(saved, saved=True)) != dump_flex(cfg):
        raise ConfigError(f"{out} holds a flex run with other settings ({saved}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_flex(cfg))
    result = FlexPipeline(cfg, out).run(workers, address)
    atomic_write_json(out / "selection.json", result)
    return result
