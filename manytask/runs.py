"""A run is a directory: resolved config, encoder files, data summary, metrics log, checkpoints, results.

``train_run`` makes one (or resumes it): it is where data, model, objectives and trainer are put together.
``Run`` reopens a run to score it and predict with it (``models.rundir.RunDir`` reads it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from manytask import runtime
from manytask.config import ConfigError, DistillConfig, RunConfig, absolutize_user_files, dump_config, load_config
from manytask.data.features import encode
from manytask.data.loading import TaskData, load_tasks
from manytask.data.slices import membership
from manytask.encoders.loading import check_segments, load_tokenizer, save_encoder_files
from manytask.evaluation.scoring import evaluate_data, predict, summarize
from manytask.io import atomic_write_json, atomic_write_text
from manytask.kinds import kind_of
from manytask.models.build import build_model, init_weights, initial_model  # noqa: F401 (how a run's model is made)
from manytask.models.rundir import RunDir
from manytask.records import IGNORE, Predictions
from manytask.training.objectives import TaskObjectives, task_objectives
from manytask.training.trainer import TaskFeatures, Trainer

log = logging.getLogger(__name__)

ObjectiveFactory = Callable[..., TaskObjectives]  # (spec, entry, train features, distill config) -> objectives


def featurize(data: list[TaskData], tokenizer, max_len: int, distill: Optional[DistillConfig] = None,
              objectives: ObjectiveFactory = task_objectives) -> list[TaskFeatures]:
    """Each task's training and evaluation features (with slice membership) and its objectives."""
    out = []
    for d in data:
        kind = kind_of(d.spec)
        slices = d.entry.slices
        if slices is not None and slices.mode != "eval" and not kind.sliceable:
            raise ConfigError(f"task {d.name!r}: slice {slices.mode} training needs a per-example loss; "
                              f"{d.spec.kind} slices are scored only (mode: eval)")
        train = encode(d.train, d.spec, tokenizer, max_len)
        evals = {s: encode(ex, d.spec, tokenizer, max_len) for s, ex in d.evals.items()}
        if slices is not None:  # applied once per example (by id and text)
            train.slices = membership(slices, d.train) if d.train else {}
            for split, examples in d.evals.items():
                evals[split].slices = membership(slices, examples)
        out.append(TaskFeatures(d.spec, train, evals, d.eval_titles, objectives(d.spec, d.entry, train, distill),
                                d.entry.loss_weight, slices.min_size if slices is not None else TaskFeatures.slice_min))
    return out


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
    from manytask.data.silver import auxiliary_labels, cache_dir

    rows: dict[str, dict[str, list[list[int]]]] = {}
    entries = {t.name: t for t in cfg.tasks}
    for d in data:
        for aux in entries[d.name].auxiliary:
            if kind_of(d.spec).word_level:
                raise ConfigError(f"task {d.name!r}: auxiliary label sets ride on sentence tasks, not "
                                  f"{d.spec.kind} tasks")
            labels, task_rows, note = auxiliary_labels(d.name, aux, d.train, d.spec.pair, tokenizer,
                                                       cfg.model.max_seq_length, cache_dir(cfg.silver_cache), IGNORE)
            aux.labels = labels
            rows.setdefault(d.name, {})[aux.name] = task_rows
            d.notes.append(note)
    return rows


def _take_label_sets(cfg: RunConfig, labels: dict[str, Optional[list[str]]]) -> None:
    """User tasks whose label set was read from a file (tagging) get it written into the config."""
    for t in cfg.tasks:
        if t.kind is not None and t.labels is None and labels.get(t.name):
            t.labels = list(labels[t.name])


WHERE_IT_RUNS = ("device", "precision", "progress", "prefetch", "report_to", "compile")  # may change when a run resumes


def _check_resumable(cfg: RunConfig, saved: Path, out: Path) -> None:
    """A run resumes with its own config; only where and how fast it runs may change (a run trained on a GPU
    in fp16 resumes on a CPU in fp32)."""
    own = load_config(saved, saved=True)
    _take_label_sets(cfg, {t.name: t.labels for t in own.tasks})
    for mine, theirs in zip(cfg.tasks, own.tasks):  # auxiliary label sets were read at the first start
        for a, b in zip(mine.auxiliary, theirs.auxiliary):
            a.labels = a.labels or b.labels
    same = own.model_copy(update={"train": own.train.model_copy(
        update={k: getattr(cfg.train, k) for k in WHERE_IT_RUNS})})
    if dump_config(same) != dump_config(cfg):
        raise ConfigError(f"{out}: the config differs from the run's own ({saved}); resume with that config")
    changed = [f"train.{k}: {getattr(own.train, k)} -> {getattr(cfg.train, k)}" for k in WHERE_IT_RUNS
               if getattr(own.train, k) != getattr(cfg.train, k)]
    if changed:
        log.info("%s resumes with %s", out, ", ".join(changed))


def train_run(cfg: RunConfig, out: Path, resume: bool = False, stop_at: Optional[int] = None,
              objectives: ObjectiveFactory = task_objectives, callbacks: Sequence = ()) -> dict:
    """Train into ``out``. With resume, continue the run found there from its last checkpoint; with
    ``stop_at``, stop after that step with a checkpoint to resume from (``{"stopped": step}``). Nothing is
    written to ``out`` before the data and the encoder have loaded. ``objectives`` builds each task's
    objectives (a seam for tests and extensions); ``callbacks`` are called as ``cb(event, record)`` for each
    plan, log, eval and end event (what metrics.jsonl holds)."""
    out = Path(out)
    saved = out / "config.yaml"
    absolutize_user_files(cfg, Path.cwd())  # as load_config does: a config built in code (a study's) too
    created = runtime.init(runtime.resolve_device(cfg.train.device))  # under torchrun: join the other ranks first
    if saved.exists() and not resume:
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and saved.exists():
        _check_resumable(cfg, saved, out)
    runtime.barrier()  # every rank has looked at OUT before rank 0 writes into it
    runtime.seed_everything(cfg.seed)
    data, skipped = load_tasks(cfg)
    _take_label_sets(cfg, {d.name: d.spec.labels for d in data})  # saved with the run: eval and serving need them
    tokenizer = load_tokenizer(cfg.model.encoder)
    aux_rows = _silver(cfg, data, tokenizer)
    for d in data:
        for note in d.notes:
            log.info(note)
    resuming = (out / "checkpoints" / "last.json").exists()
    # a resumed run loads its own checkpoint: no need to read init_from's weights again
    model = initial_model(cfg if not resuming else cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"init_from": None})}), [d.spec for d in data])
    check_segments(tokenizer, model.encoder, [d.spec for d in data])
    feats = featurize(data, tokenizer, cfg.model.max_seq_length, cfg.distill, objectives)
    for f in feats:
        f.train.aux = aux_rows.get(f.spec.name, {})
    if not saved.exists() and runtime.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_encoder_files(model.encoder, tokenizer, out / "encoder")
        atomic_write_json(out / "data.json", data_summary(data, skipped))
        atomic_write_text(saved, dump_config(cfg))
    runtime.barrier()
    trainer = Trainer(model, feats, cfg.train, out, cfg.seed, tokenizer.pad_token_id, list(callbacks))
    if resume:
        trainer.resume()
    if trainer.finished and (out / "results.json").exists():
        log.info("%s: training already finished", out)
        return _leave(created, json.loads((out / "results.json").read_text()))
    summary = trainer.train(stop_at)
    if "stopped" in summary:
        return _leave(created, summary)
    summary["titles"] = {d.name: d.eval_titles for d in data}
    summary["skipped"] = skipped
    if runtime.is_main():
        atomic_write_json(out / "results.json", summary)
    return _leave(created, summary)


def _leave(created: bool, result: dict) -> dict:
    """The ranks leave the process group together (when this run made it); rank 0 goes on alone, reporting."""
    if created:
        runtime.finish()
    return result


class Run(RunDir):
    """A trained run: scored on its dev sets, and asked for predictions on examples."""

    def predict_examples(self, spec, examples, which: str = "best") -> Predictions:
        """Predictions of ``spec.name`` on examples (its best checkpoint, as ``predict`` and ``submit`` use)."""
        tok = self.tokenizer()
        feats = encode(examples, spec, tok, self.cfg.model.max_seq_length)
        return predict(self.model_for(spec.name, which), spec, feats, self.cfg.train.eval_batch_size,
                       tok.pad_token_id, self.precision)

    def evaluate(self, which: str = "last", write: bool = True) -> dict:
        """Dev metrics of every task: all with the last checkpoint (one model), or each task with its own
        best checkpoint (``which="best"``; the average is then not one model's). Saved as RUN/eval.json
        unless ``write`` is false."""
        cfg = self.cfg
        data, skipped = load_tasks(cfg, with_train=False)
        tok = self.tokenizer()
        results, titles = {}, {}
        for d in data:
            model = self.model_for(d.name, which)
            results[d.name] = evaluate_data(model, d, tok, cfg.model.max_seq_length, cfg.train.eval_batch_size,
                                            self.precision)
            titles[d.name] = d.eval_titles
        out = {**summarize(results, {d.name: d.spec for d in data}), "titles": titles, "checkpoint": which,
               "skipped": skipped}
        if write:
            atomic_write_json(self.path / "eval.json", out)
        return out
