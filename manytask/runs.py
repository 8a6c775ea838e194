"""A run is a directory: resolved config, encoder files, data summary, metrics log, checkpoints, results.

``train_run`` makes one (or resumes it); ``Run`` reopens it for eval, predict and submit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file

from manytask.config import ConfigError, RunConfig, absolutize_user_files, dump_config, load_config
from manytask.data.features import Features, encode
from manytask.data.loading import TaskData, load_tasks
from manytask.evaluation.predict import evaluate_task, summarize
from manytask.models.encoder import encoder_from_dir, load_encoder, load_tokenizer, save_encoder_files
from manytask.models.multitask import MultiTaskModel
from manytask.training.checkpoint import CheckpointDir, atomic_write_json, atomic_write_text, load_weights
from manytask.training import distributed
from manytask.training.devices import resolve_device
from manytask.training.trainer import TaskFeatures, Trainer, default_loss, seed_everything

log = logging.getLogger(__name__)


def build_model(cfg: RunConfig, specs, encoder) -> MultiTaskModel:
    model = MultiTaskModel(
        encoder, specs, {t.name: t.branch_layers for t in cfg.tasks}, pooling=cfg.model.pooling, dropout=cfg.model.dropout,
        split_depth={t.name: t.split_depth for t in cfg.tasks if t.split_depth is not None},
    )
    for t in cfg.tasks:
        if t.name not in model.specs:
            continue  # a task absent from the data (skipped GLUE task)
        for a in t.auxiliary:
            if a.labels:
                model.add_aux(t.name, a.name, len(a.labels), cfg.model.dropout)
        if t.slices is not None and t.slices.mode == "heads":
            for fn in t.slices.functions:
                model.add_slice_head(t.name, fn.name, cfg.model.dropout)
        elif t.slices is not None and t.slices.mode == "sbl":
            model.use_sbl_head(t.name, 1 + len(t.slices.functions), cfg.model.dropout)
    if cfg.model.freeze_trunk:
        model.freeze_trunk()
    return model


def init_weights(model: MultiTaskModel, source: Path, tasks: list[str], which: str = "last") -> Path:
    """Start from another run's weights: its last checkpoint (the trained model, as BAM and MeTaL
    fine-tune it), or with ``which="best"`` the checkpoint that was best on dev for the one task
    being trained. Every parameter of ``model`` must be found there with the same shape."""
    ckpt = CheckpointDir(source / "checkpoints")
    if which == "best":
        best = ckpt.best()
        if len(tasks) != 1 or tasks[0] not in best:
            raise ConfigError(f"model.init_checkpoint: best needs one task that {source} was scored on "
                              f"(tasks {tasks}; {source} has best checkpoints for {sorted(best)})")
        weights = ckpt.root / best[tasks[0]]["weights"]
    elif ckpt.last() is not None:
        weights = ckpt.root / ckpt.last()["weights"]
    else:
        raise FileNotFoundError(f"model.init_from: {source} has no checkpoint")
    state = load_file(str(weights))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ConfigError(f"model.init_from: {weights} does not fit this model "
                          f"(missing {missing[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict({k: state[k] for k in own})
    log.info("initialised from %s", weights)
    return weights


def initial_model(cfg: RunConfig, specs=None) -> MultiTaskModel:
    """The model a run starts training from: the encoder (pretrained, or random), the branches and
    heads, then ``model.init_from``'s weights where the config names a source run."""
    specs = specs if specs is not None else [t.resolve(Path.cwd()) for t in cfg.tasks]
    seed_everything(cfg.seed)
    model = build_model(cfg, specs, load_encoder(cfg.model))
    if cfg.model.init_from:
        init_weights(model, Path(cfg.model.init_from), [s.name for s in specs], cfg.model.init_checkpoint)
    return model


def featurize(data: list[TaskData], tokenizer, max_len: int) -> list[TaskFeatures]:
    out = []
    for d in data:
        f = TaskFeatures(spec=d.spec, train=encode(d.train, d.spec, tokenizer, max_len),
                         evals={s: encode(ex, d.spec, tokenizer, max_len) for s, ex in d.evals.items()},
                         eval_titles=d.eval_titles, loss_weight=d.entry.loss_weight)
        if d.entry.slices is not None:
            add_slices(d.entry.slices, d, f)
        out.append(f)
    return out


def add_slices(cfg, data: TaskData, feats: TaskFeatures) -> None:
    """Slice membership of every example (applied once, by example id), and how the task learns from it."""
    from manytask.data.slices import membership

    if data.spec.kind == "tagging" and cfg.mode != "eval":
        raise ConfigError(f"task {data.name!r}: slice {cfg.mode} training is for sentence tasks; tagging slices "
                          "are scored only (mode: eval)")
    feats.train.slices = membership(cfg, data.train) if data.train else {}
    for split, examples in data.evals.items():
        feats.evals[split].slices = membership(cfg, examples)
    feats.slice_mode, feats.slice_weight, feats.slice_min = cfg.mode, cfg.weight, cfg.min_size


def data_summary(data: list[TaskData], skipped: list[str]) -> dict:
    return {
        "tasks": {
            d.name: {
                "title": d.spec.title,
                "kind": d.spec.kind,
                "labels": d.spec.labels,
                "label_range": d.spec.label_range,
                "train_examples": len(d.train),
                "train_examples_before_cap": d.train_size_before_cap,
                "eval": {s: {"title": d.eval_titles[s], "examples": len(ex)} for s, ex in d.evals.items()},
                "files": d.file_hashes,
                "notes": d.notes,
            }
            for d in data
        },
        "skipped": skipped,
    }


def _silver(cfg: RunConfig, data: list[TaskData], tokenizer) -> dict[str, dict[str, list[list[int]]]]:
    """Silver token labels of each task's auxiliary label sets, on its training examples; their label sets
    are written into the config (the model's auxiliary heads are sized by them)."""
    from manytask.data.features import IGNORE
    from manytask.data.silver import auxiliary_labels, cache_dir

    rows: dict[str, dict[str, list[list[int]]]] = {}
    entries = {t.name: t for t in cfg.tasks}
    for d in data:
        for aux in entries[d.name].auxiliary:
            if d.spec.kind == "tagging":
                raise ConfigError(f"task {d.name!r}: auxiliary label sets ride on sentence tasks, not tagging tasks")
            labels, task_rows, note = auxiliary_labels(d.name, aux, d.train, d.spec.pair, tokenizer,
                                                       cfg.model.max_seq_length, cache_dir(cfg.silver_cache), IGNORE)
            aux.labels = labels
            rows.setdefault(d.name, {})[aux.name] = task_rows
            d.notes.append(note)
    return rows


def _take_tag_sets(cfg: RunConfig, labels: dict[str, Optional[list[str]]]) -> None:
    """Tagging tasks whose tag set was read from a file get it written into the config."""
    for t in cfg.tasks:
        if t.kind == "tagging" and t.labels is None and labels.get(t.name):
            t.labels = list(labels[t.name])


def train_run(cfg: RunConfig, out: Path, resume: bool = False, stop_at: Optional[int] = None) -> dict:
    """Train into ``out``. With resume, continue the run found there from its last checkpoint; with
    ``stop_at``, stop after that step with a checkpoint to resume from (``{"stopped": step}``)."""
    out = Path(out)
    saved = out / "config.yaml"
    absolutize_user_files(cfg, Path.cwd())  # as load_config does: a config built in code (a study's) too
    distributed.init(resolve_device(cfg.train.device))  # under torchrun: join the other ranks first
    if saved.exists() and not resume:
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and saved.exists():
        own = load_config(saved, saved=True)
        _take_tag_sets(cfg, {t.name: t.labels for t in own.tasks})
        for mine, theirs in zip(cfg.tasks, own.tasks):  # auxiliary label sets were read at the first start
            for a, b in zip(mine.auxiliary, theirs.auxiliary):
                a.labels = a.labels or b.labels
        if dump_config(own) != dump_config(cfg):
            raise ConfigError(f"{out}: the config differs from the run's own ({saved}); resume with that config")
    distributed.barrier()  # every rank has looked at OUT before rank 0 writes into it
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data, skipped = load_tasks(cfg)
    _take_tag_sets(cfg, {d.name: d.spec.labels for d in data})  # saved with the run: eval and serving need them
    tokenizer = load_tokenizer(cfg.model.encoder)
    aux_rows = _silver(cfg, data, tokenizer)
    for d in data:
        for note in d.notes:
            log.info(note)
    resuming = (out / "checkpoints" / "last.json").exists()
    # a resumed run loads its own checkpoint: no need to read init_from's weights again
    model = initial_model(cfg if not resuming else cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"init_from": None})}), [d.spec for d in data])
    feats = featurize(data, tokenizer, cfg.model.max_seq_length)
    for f in feats:
        f.train.aux = aux_rows.get(f.spec.name, {})
        f.aux_weights = {a.name: a.weight for a in next(t for t in cfg.tasks if t.name == f.spec.name).auxiliary}
    if not saved.exists() and distributed.is_main():
        save_encoder_files(model.encoder, tokenizer, out / "encoder")
        atomic_write_json(out / "data.json", data_summary(data, skipped))
        atomic_write_text(saved, dump_config(cfg))
    distributed.barrier()
    loss_fn = default_loss
    if cfg.distill is not None:
        from manytask.distill.teacher import TeacherLoss

        loss_fn = TeacherLoss(cfg.distill, feats)
    trainer = Trainer(model, feats, cfg.train, out, cfg.seed, tokenizer.pad_token_id, loss_fn=loss_fn)
    if resume:
        trainer.resume()
    if trainer.step >= trainer.total_steps and (out / "results.json").exists():
        log.info("%s: training already finished", out)
        return json.loads((out / "results.json").read_text())
    summary = trainer.train(stop_at)
    if "stopped" in summary:
        return summary
    summary["titles"] = {d.name: d.eval_titles for d in data}
    summary["skipped"] = skipped
    if distributed.is_main():
        atomic_write_json(out / "results.json", summary)
    distributed.barrier()
    return summary


@dataclass
class Run:
    """A trained run, reopened from its directory."""

    path: Path
    cfg: RunConfig

    @classmethod
    def open(cls, path: Path) -> "Run":
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise FileNotFoundError(f"{path} is not a manytask run (no config.yaml)")
        if not (path / "checkpoints" / "best.json").exists() and not (path / "checkpoints" / "last.json").exists():
            raise FileNotFoundError(f"{path}: the run has no checkpoint yet")
        return cls(path, load_config(path / "config.yaml", saved=True))

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path / "encoder"))

    def specs(self):
        trained = json.loads((self.path / "data.json").read_text())["tasks"]
        specs = [t.resolve(Path.cwd()) for t in self.cfg.tasks]
        return [s for s in specs if s.name in trained]

    def model_for(self, task: Optional[str] = None, which: str = "best") -> MultiTaskModel:
        """The model with the weights that were best for ``task`` (or the last weights)."""
        ckpt = CheckpointDir(self.path / "checkpoints")
        weights = None
        if which == "best" and task is not None and task in ckpt.best():
            weights = ckpt.root / ckpt.best()[task]["weights"]
        if weights is None:
            info = ckpt.last()
            if info is None:
                raise FileNotFoundError(f"{self.path}: no checkpoint")
            weights = ckpt.root / info["weights"]
        model = build_model(self.cfg, self.specs(), encoder_from_dir(self.path / "encoder", self.cfg.model.dropout,
                                                                       pooler=self.cfg.model.pooling == "pooler"))
        load_weights(weights, model)
        return model.to(resolve_device(self.cfg.train.device)).eval()

    def predict_examples(self, spec, examples, which: str = "best"):
        """Predictions of ``spec.name`` on examples (its best checkpoint, as ``predict`` and ``submit`` use)."""
        from manytask.evaluation.predict import predict

        tok = self.tokenizer()
        feats = encode(examples, spec, tok, self.cfg.model.max_seq_length)
        return predict(self.model_for(spec.name, which), spec, feats, self.cfg.train.eval_batch_size,
                       tok.pad_token_id, self.cfg.train.precision)

    def evaluate(self, which: str = "last") -> dict:
        """Dev metrics of every task: all with the last checkpoint (one model), or each task with its own
        best checkpoint (``which="best"``; the average is then not one model's)."""
        cfg = self.cfg
        data, skipped = load_tasks(cfg, with_train=False)
        tok = self.tokenizer()
        results, titles = {}, {}
        cache: dict[str, MultiTaskModel] = {}
        ckpt = CheckpointDir(self.path / "checkpoints")
        for d in data:
            key = ckpt.best().get(d.name, {}).get("weights", "last") if which == "best" else "last"
            if key not in cache:
                cache[key] = self.model_for(d.name, which)
            tf = TaskFeatures(d.spec, Features([], [], [], None),
                              {s: encode(ex, d.spec, tok, cfg.model.max_seq_length) for s, ex in d.evals.items()},
                              d.eval_titles)
            if d.entry.slices is not None:
                add_slices(d.entry.slices, d, tf)
            results[d.name] = evaluate_task(cache[key], d.spec, tf.evals, d.eval_titles, cfg.train.eval_batch_size,
                                            tok.pad_token_id, cfg.train.precision, tf.slice_min)
            titles[d.name] = d.eval_titles
        out = {**summarize(results, {d.name: d.spec for d in data}), "titles": titles, "checkpoint": which,
               "skipped": skipped}
        atomic_write_json(self.path / "eval.json", out)
        return out


