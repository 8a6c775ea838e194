"""The public Python API: everything the command line does, for notebooks and scripts.

    import manytask as mt
    run = mt.train("configs/demo.yaml", out="runs/demo", overrides={"train.epochs": 1})   # or a dict config
    run.scores()                                         # Scores: per-task dev metrics and the average
    model = run.model()                                  # loaded once, cached
    model.predict(["A gem of a film."], task="sst2")     # [Prediction(task='sst2', label='1', probs={...})]
    model.predict([("A man plays.", "Someone plays.")])  # every pair task: [{'mrpc': Prediction, ...}]
    model.to_bundle("runs/demo/bundle"); mt.Bundle("runs/demo/bundle").model().predict(["..."])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from manytask import bundles, inference, runs
from manytask import config as config_module
from manytask.config import RunConfig
from manytask.errors import ConfigError
from manytask.records import Prediction  # noqa: F401 (what predict returns)

ConfigLike = Union[str, Path, dict, RunConfig]
Overrides = Union[dict[str, Any], Sequence[str], None]


def _override_list(overrides: Overrides) -> list[str]:
    """``{"train.lr": 3e-5}`` or ``["train.lr=3e-5"]`` -> the ``--set`` strings the configs take."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


def _save_tables(data: dict, directory: Path) -> dict:
    """A dict config whose tasks give rows in memory (a pandas DataFrame, a list of dicts) where a file goes,
    with each such table saved under ``directory`` and named there (format ``rows``: ids are row indexes)."""
    from manytask.data.sources import is_table, save_table

    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        return data
    out = []
    for i, entry in enumerate(tasks):
        if isinstance(entry, dict):
            entry = dict(entry)
            name = str(entry.get("name", i))
            for role in ("train", "dev", "test"):
                if is_table(entry.get(role)):
                    path = save_table(entry[role], directory, f"{name}-{role}", f"tasks[{i}].{role}")
                    entry[role] = {"path": str(path), "format": "rows"}
            if isinstance(entry.get("splits"), dict):
                entry["splits"] = {k: _saved_split(v, directory, f"{name}-{k}", f"tasks[{i}].splits.{k}")
                                   for k, v in entry["splits"].items()}
        out.append(entry)
    return {**data, "tasks": out}


def _saved_split(split, directory: Path, stem: str, what: str):
    from manytask.data.sources import is_table, save_table

    if isinstance(split, dict) and is_table(split.get("path")):
        return {**split, "path": str(save_table(split["path"], directory, stem, what)), "format": "rows"}
    return split


def load_config(source: ConfigLike, overrides: Overrides = None, tables: Optional[Union[str, Path]] = None) -> RunConfig:
    """A run config from a YAML file, a dict or a RunConfig, with overrides applied; errors name the key.

    A dict config's task may give a pandas DataFrame or a list of dicts wherever it names a file (``train``,
    ``dev``, ``test``, a split's ``path``): the rows are saved under ``tables`` (default
    $MANYTASK_CACHE/inputs; ``train`` uses OUT/inputs) so the run can be resumed and re-read."""
    load = config_module.load_config
    if isinstance(source, RunConfig):
        return load(data=source.model_dump(mode="json", exclude_none=True), overrides=_override_list(overrides))
    if isinstance(source, dict):
        from manytask.io import user_cache

        data = _save_tables(source, Path(tables) if tables else user_cache() / "inputs")
        return load(data=json.loads(json.dumps(data)), overrides=_override_list(overrides))
    return load(Path(source), _override_list(overrides))


@dataclass(frozen=True)
class Scores:
    """Dev scores of a model: per task its primary score and every split's metrics, and the GLUE-style average
    (WNLI excluded). ``checkpoint``: ``last`` (one model) or ``best`` (each task its own best checkpoint)."""

    average: float
    primary: dict[str, float]
    tasks: dict[str, dict[str, dict]]
    titles: dict[str, dict[str, str]]
    checkpoint: str
    skipped: list[str]

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        return cls(d["average"], d["primary"], d["tasks"], d.get("titles", {}), d.get("checkpoint", "last"),
                   d.get("skipped", []))

    def as_dict(self) -> dict:
        return asdict(self)


class Model(inference.Model):
    """A trained multi-task model ready to answer (``predict``), to be scored on its tasks' dev data
    (``scores``), and to be written as a bundle to serve."""

    def scores(self, config_: ConfigLike, batch_size: int = 64) -> Scores:
        """Dev scores of this model (in its precision) on the tasks of a config that it has, each task's dev data
        read as the config says (caps, re-splits)."""
        from manytask.evaluation.scoring import evaluate_data, summarize

        data = [d for d in task_data(config_, with_train=False).values() if d.name in self.net.specs]
        results = {d.name: evaluate_data(self.net, d, self.tokenizer, self.max_length, batch_size, self.precision)
                   for d in data}
        return Scores.from_dict({**summarize(results, {d.name: d.spec for d in data}), "checkpoint": "given",
                                 "titles": {d.name: d.eval_titles for d in data}})

    def to_bundle(self, path: Union[str, Path], origin: Optional[dict] = None) -> "Bundle":
        """Write this model as a bundle (its encoder as the trunk, each task a package) and return it."""
        bundles.Bundle.create(Path(path), self.net.share([]), self.tokenizer, self.max_length, origin)
        bundle = Bundle(path)
        for name in self.tasks:
            bundle.put(bundles.TaskPackage.from_model(self.net, name, {"max_seq_length": self.max_length}))
        return bundle


class Run(runs.Run):
    """A trained run directory: scores, a model to predict with, prediction and submission files, a bundle."""

    def scores(self, which: str = "last", write: bool = False) -> Scores:
        """Dev scores of the last checkpoint (one model), or of each task's best (``which="best"``). Writes
        RUN/eval.json only when ``write`` is true."""
        return Scores.from_dict(self.evaluate(which, write=write))

    def model(self, which: str = "last", device: Optional[str] = None, precision: str = "fp32") -> Model:
        """The run's model (its last checkpoint; ``which="best"`` needs one task, or a frozen trunk), loaded
        once and kept."""
        key = (which, device, precision)
        cache = self.__dict__.setdefault("_api_models", {})
        if key not in cache:
            task = self.specs()[0].name if which == "best" and len(self.specs()) == 1 else None
            if which == "best" and task is None:
                raise ConfigError(f"{self.path}: which='best' picks one task's checkpoint; this run has several tasks "
                                  "(use the last checkpoint, or run.model_for(task, 'best'))")
            cache[key] = Model(self.model_for(task, which), self.tokenizer(), self.cfg.model.max_seq_length,
                               device or str(self.device), precision)
        return cache[key]

    def predict_file(self, task: str, input: Any, output: Union[str, Path],
                     text_fields: Optional[list] = None, id_field: Optional[str] = None) -> int:
        """One prediction per record of ``input`` (a file, a DataFrame or a list of dicts; a table's rows are
        keyed by their index) into ``output`` (.jsonl, or TSV/CoNLL); returns the count."""
        from manytask.data.sources import is_table, save_table
        from manytask.evaluation.submit import predict_file
        from manytask.io import user_cache

        fmt = None
        if is_table(input):
            input, fmt = save_table(input, user_cache() / "inputs", f"{task}-input", "input"), "rows"
        return predict_file(self, task, Path(input), Path(output), text_fields, id_field, fmt)

    def submit(self, out: Union[str, Path]) -> tuple[list[str], list[str]]:
        """GLUE leaderboard files and ``<task>.tsv`` for user tasks' test files: (written, notes)."""
        from manytask.evaluation.submit import write_submission

        return write_submission(self, Path(out))

    def to_bundle(self, path: Union[str, Path], which: str = "last") -> "Bundle":
        """The run as one bundle (``which="best"``: each task's best checkpoint; needs a frozen trunk)."""
        bundles.Bundle.from_run(self.path, Path(path), which)
        return Bundle(path)

    def write_targets(self, store: Union[str, Path], which: str = "best") -> list[Path]:
        """The run's predictions on its training examples as a teacher-target store."""
        from manytask.distill.teacher import write_targets

        return write_targets(self.path, Path(store), which)


class Bundle(bundles.Bundle):
    """A bundle directory: a trunk and task packages; add, update or remove one task at a time."""

    def model(self, tasks: Optional[list[str]] = None, device: str = "cpu", precision: str = "fp32",
              tolerance: float = 0.5) -> Model:
        """The bundle's tasks (all, or ``tasks``) as one model; ``precision="auto"`` takes the bundle's precision
        plan for ``tolerance`` (made by ``score("auto")``)."""
        plan = None
        if precision == "auto":
            from manytask.serving.plan import load_plan

            found = load_plan(self, tolerance)
            if found is None:
                raise ConfigError(f"{self.root}: no precision plan for tolerance {tolerance:g}: make one with "
                                  f"Bundle.score('auto') or `manytask bundle score --precision auto`")
            plan = found["int8"]
        return Model(self.merged_model(tasks), self.tokenizer(), self.manifest["trunk"]["max_seq_length"], device,
                     precision, plan)

    def score(self, precision: str = "int8", glue_dir: Optional[Union[str, Path]] = None,
              tolerance: float = 0.5) -> dict:
        """Every task's dev score in fp32 and ``precision`` (cached in the bundle for ``serve``); ``auto`` searches
        the precision plan for ``tolerance`` (written to the bundle; ``plan(tolerance)`` reads it)."""
        from manytask.serving.plan import score_precisions

        return score_precisions(self, precision, resolve_glue_dir(glue_dir), tolerance=tolerance)

    def plan(self, tolerance: float = 0.5) -> Optional[dict]:
        """The bundle's precision plan for ``tolerance`` (None before ``score("auto")`` made it)."""
        from manytask.serving.plan import load_plan

        return load_plan(self, tolerance)


def train(config_: ConfigLike, out: Union[str, Path], overrides: Overrides = None, resume: bool = False,
          stop_at: Optional[int] = None, callbacks: Sequence = ()) -> Run:
    """Train a run into ``out`` (or resume it) and return it; ``run.scores()`` gives its dev scores.
    ``callbacks``: functions called as ``cb(event, record)`` at each plan, log, eval and end event."""
    cfg = load_config(config_, overrides, tables=Path(out) / "inputs")
    runs.train_run(cfg, Path(out), resume=resume, stop_at=stop_at, callbacks=callbacks)
    return Run.open(Path(out)) if (Path(out) / "checkpoints").exists() else Run(Path(out), cfg)


def task_data(config_: ConfigLike, with_train: bool = True) -> dict:
    """Each task's data as a run reads it (files, caps, re-splits): name -> TaskData (spec, train, evals)."""
    from manytask.data.loading import load_tasks

    data, _ = load_tasks(config_ if isinstance(config_, RunConfig) else load_config(config_), with_train=with_train)
    return {d.name: d for d in data}


def flex_config(path: Union[str, Path], tasks: Optional[list[str]] = None) -> RunConfig:
    """A flex run's tasks, data and model settings as a run config (``task_data`` reads its dev sets)."""
    from manytask.flex.config import load_flex, probe_config

    path = Path(path)
    return probe_config(load_flex(path / "flex.yaml" if path.is_dir() else path, saved=True), tasks)


def encoder_path(name: str = "default") -> str:
    """Where an encoder name leads (``default``: the packaged all-MiniLM-L6-v2 directory)."""
    from manytask.encoders.loading import resolve_encoder

    return resolve_encoder(name)


def cpu_info() -> dict:
    """The CPU a measurement ran on (model, cores, the flags that decide bf16 and int8 speed)."""
    from manytask.machine import cpu_info as info

    return info()


def open_run(path: Union[str, Path]):
    """A run directory, or an ensemble directory (``ensemble.json``): both score, predict and submit."""
    from manytask.metal.ensemble import Ensemble

    return Ensemble(Path(path)) if Ensemble.is_ensemble(Path(path)) else Run.open(Path(path))


def resolve_glue_dir(glue_dir=None) -> Path:
    """The GLUE directory: the one given, else $MANYTASK_GLUE_DIR, else ./data/glue."""
    return Path(glue_dir) if glue_dir else RunConfig(tasks=["sst2"]).resolved_glue_dir()


def glue_files(glue_dir: Optional[Union[str, Path]] = None) -> dict[str, dict[str, bool]]:
    """GLUE task -> split -> is its file present (under ``glue_dir``, else $MANYTASK_GLUE_DIR, else ./data/glue)."""
    from manytask.tasks import GLUE_TASKS

    root = resolve_glue_dir(glue_dir)
    return {t.name: {n: (t.split_root(root) / s.path).is_file() for n, s in t.splits.items()} for t in GLUE_TASKS.values()}


# ---- studies and workflows --------------------------------------------------------------------------------
def bam(config_: Union[str, Path], out: Optional[Union[str, Path]] = None, seeds: Optional[list[int]] = None,
        overrides: Overrides = None, workers: int = 0, address: Optional[str] = None) -> dict:
    """A BAM study (teachers, target stores, students, fine-tuning) into ``out``, then its report."""
    from manytask.distill.recipes import load_study
    from manytask.distill.study import run_study
    from manytask.report.bam import write_report

    cfg = load_study(Path(config_), _override_list(overrides))
    out = Path(out) if out else Path("runs") / cfg.name
    run_study(cfg, out, seeds, workers, address)
    return {**write_report(out), "out": out}


def flex_pipeline(config_: Union[str, Path], out: Optional[Union[str, Path]] = None, overrides: Overrides = None,
         workers: int = 0, address: Optional[str] = None) -> dict:
    """The flexible multi-task pipeline (partial fine-tuning, compression, selection) and its bundle."""
    from manytask.flex.config import load_flex
    from manytask.flex.pipeline import run_flex
    from manytask.report.flex import write_report

    cfg = load_flex(Path(config_), _override_list(overrides))
    out = Path(out) if out else Path("runs") / cfg.name
    result = run_flex(cfg, out, workers, address)
    return {"out": out, "result": result, "report": write_report(out, cfg.mixed.delta), "bundle_choice": cfg.bundle}


def write_report(path: Union[str, Path]) -> dict:
    """Rebuild the report of a BAM study or a finished flex run from what its runs wrote."""
    path = Path(path)
    if (path / "study.yaml").exists():
        from manytask.report.bam import write_report

        return write_report(path)
    if (path / "flex.yaml").exists() and (path / "selection.json").exists():
        from manytask.flex.config import load_flex
        from manytask.report.flex import write_report as write_flex_report

        rep = write_flex_report(path, load_flex(path / "flex.yaml", saved=True).mixed.delta)
        return {**rep, "plots": [str(path / "flex.png")]}
    from manytask.errors import NotFound

    raise NotFound(f"{path} is neither a study (study.yaml) nor a finished flex run (flex.yaml, selection.json)")


def ensemble(run_dirs: Sequence[Union[str, Path]], task: str, out: Union[str, Path], mode: str = "mean"):
    """Combine runs that share a task into an ensemble directory (``eval``, ``predict`` and ``submit`` take it)."""
    from manytask.metal.ensemble import Ensemble

    return Ensemble.create([Path(r) for r in run_dirs], task, Path(out), mode)


def ensemble_members(config_: ConfigLike, task: str, k: int, out: Union[str, Path], fraction: float = 0.2,
                     mode: str = "mean"):
    """k members on k seeded re-splits of the task's training set, and their ensemble (OUT/ensemble)."""
    from manytask.metal.ensemble import train_members

    return train_members(load_config(config_), task, k, Path(out), fraction, mode)


def weak(config_: Union[str, Path], out: Union[str, Path], glue_dir: Optional[Union[str, Path]] = None) -> dict:
    """Labeling functions + Snorkel's label model: weak labels and a teacher-target store in ``out``."""
    from manytask.metal.weak import load_weak, run_weak

    return run_weak(load_weak(Path(config_)), Path(out), resolve_glue_dir(glue_dir))


# ---- serving ------------------------------------------------------------------------------------------------
def serve(bundle: Optional[Union[str, Path]] = None, runs: Optional[dict[str, str]] = None, **options) -> None:
    """Serve a bundle (or a run, bundled once into RUN/bundle), or separate runs (task -> run directory), over
    HTTP until stopped; ``options`` as ``manytask serve`` takes them (host, port, precision, workers, ...)."""
    from manytask.serving.launch import serve as launch

    limits = options.pop("limits", {})
    launch(Path(bundle) if bundle is not None else None, runs or {}, limits, **options)


def export_model(source: Union[str, Path], to: Union[str, Path], format: str = "hf", task: Optional[str] = None) -> dict:
    """A run's or bundle's task as a transformers model directory (``hf``), or a task or a whole bundle as ONNX."""
    from manytask.export import export as write

    return write(Path(source), Path(to), format, task)


def app(bundle: Union[str, Path], device: str = "cpu", precision: str = "fp32", admin_token: Optional[str] = None):
    """The server's ASGI app over a bundle, for a notebook or a test client (no port opened)."""
    from manytask.serving.app import create_app
    from manytask.serving.launch import bundle_of
    from manytask.serving.predictor import MergedPredictor

    return create_app(MergedPredictor(bundles.Bundle(bundle_of(Path(bundle))), device, precision),
                      admin_token=admin_token)
