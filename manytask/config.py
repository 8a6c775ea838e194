"""Run configuration: YAML validated by pydantic; unknown keys and wrong types are errors naming them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import ValidationError, field_validator

from manytask.entries import (  # noqa: F401
    SMALL_SLICE,
    AuxiliarySpec,
    Resplit,
    SliceFunction,
    SlicesConfig,
    TaskEntry,  # (the config's vocabulary)
    check_task_entries,
    first_error,
)
from manytask.errors import ConfigError  # noqa: F401
from manytask.tasks import StrictModel


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
    batch_size: int = 32  # the global batch of one optimizer step (all processes and micro-batches together)
    gradient_accumulation_steps: int = 1  # micro-batches per step: each process runs batch_size / (W x this)
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
    patience: Optional[int] = None  # early stopping: evaluations without a gain of min_delta in the dev average
    min_delta: float = 0.0  # points of the dev average (primary scores, x100) that count as a gain
    # experiment trackers, optional extras; None: TensorBoard event files in RUN/tensorboard where installed
    report_to: Optional[list[Literal["tensorboard", "mlflow", "wandb"]]] = None
    deterministic: bool = False  # torch's deterministic algorithms (slower on GPUs; CPU runs are deterministic)
    tf32: bool = True  # on Ampere and later GPUs, fp32 matmuls in TF32 (torch.set_float32_matmul_precision("high"))
    prefetch: int = 2  # steps collated ahead in a background thread (0: on the training thread)
    compile: bool = False  # torch.compile every encoder layer (dynamic shapes); benchmarks/train_throughput.py

    @field_validator("batch_size", "eval_batch_size", "log_every", "gradient_accumulation_steps")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("patience")
    @classmethod
    def _patience(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError("must be at least 1 (evaluations)")
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
            given = getattr(t, role)
            if isinstance(given, str) and not Path(given).is_absolute():
                setattr(t, role, str((base / given).resolve()))
            elif given is not None and not isinstance(given, str) and given.path and not Path(given.path).is_absolute():
                given.path = str((base / given.path).resolve())
        for s in (t.splits or {}).values():
            if s.path is not None and not Path(s.path).is_absolute():
                s.path = str((base / s.path).resolve())


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
