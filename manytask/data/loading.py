"""Assemble a task's train and evaluation sets: files, re-splits, caps, and what is missing."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split

from manytask.config import RunConfig, TaskEntry
from manytask.data.readers import read_split
from manytask.data.sources import open_source
from manytask.data.words import assign_tags
from manytask.errors import ManytaskError
from manytask.kinds import kind_of
from manytask.records import Example
from manytask.tasks import TaskSpec

log = logging.getLogger(__name__)


class MissingData(ManytaskError, FileNotFoundError):
    """A task cannot be trained or evaluated because files are absent."""


@dataclass
class TaskData:
    spec: TaskSpec
    entry: TaskEntry
    train: list[Example]
    evals: dict[str, list[Example]]  # evaluation split name -> examples
    eval_titles: dict[str, str]  # evaluation split name -> column title in tables
    notes: list[str] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    train_size_before_cap: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def hold_out(spec: TaskSpec, examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded, stratified split of a labelled file into (train, held-out evaluation) parts."""
    idx = np.arange(len(examples))
    strata = kind_of(spec).strata(spec, [e.label for e in examples])
    counts = np.bincount(strata - strata.min())
    stratify = strata if counts[counts > 0].min() >= 2 else None
    train_idx, eval_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return [examples[i] for i in sorted(train_idx)], [examples[i] for i in sorted(eval_idx)]


def cap(examples: list[Example], n: Optional[int], seed: int, name: str) -> list[Example]:
    """A seeded subset of at most n examples, in file order (the same for every training seed)."""
    if n is None or len(examples) <= n:
        return examples
    keep = _rng(seed, name).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in sorted(keep)]


def _read(spec: TaskSpec, split: str, root: Path, hashes: dict[str, str]) -> list[Example]:
    return read_split(spec, split, root, fingerprints=hashes)


def _exists(spec: TaskSpec, split: str, root: Path) -> bool:
    return open_source(spec, split, root).exists()


def _where(spec: TaskSpec, split: str, root: Path) -> str:
    return open_source(spec, split, root).where


def load_task(entry: TaskEntry, spec: TaskSpec, glue_dir: Path, data_seed: int, with_train: bool = True) -> TaskData:
    """Read a task's training and evaluation sets, applying its re-split and caps."""
    root = spec.split_root(glue_dir)
    hashes: dict[str, str] = {}
    notes: list[str] = []
    evals: dict[str, list[Example]] = {}
    titles: dict[str, str] = {}
    train: list[Example] = []
    dev_splits = [n for n, s in spec.splits.items() if s.role == "dev"]
    train_splits = [n for n, s in spec.splits.items() if s.role == "train"]
    if entry.resplit:
        src = entry.resplit.source
        if src not in spec.splits or spec.splits[src].unlabeled:
            raise MissingData(f"task {spec.name!r}: re-split source {src!r} is not a labelled split of the task "
                              f"(labelled: {', '.join(n for n, s in spec.splits.items() if not s.unlabeled)})")
        if not _exists(spec, src, root):
            raise MissingData(f"task {spec.name!r}: re-split source missing: {_where(spec, src, root)}")
        source = _read(spec, src, root, hashes)
        train, held = hold_out(spec, source, entry.resplit.dev_fraction, entry.resplit.seed)
        name = f"{src}_heldout"
        evals[name] = held
        base_title = spec.splits[src].display or spec.title
        titles[name] = f"{base_title} ({src} re-split)"
        notes.append(
            f"{spec.title}: trained on {len(train)} and evaluated on {len(held)} examples of {src} "
            f"(seeded stratified hold-out, fraction {entry.resplit.dev_fraction}, seed {entry.resplit.seed}); "
            "not comparable with published dev numbers"
        )
        if entry.resplit.keep_dev:
            for s in dev_splits:
                if s != src and _exists(spec, s, root):
                    evals[s] = _read(spec, s, root, hashes)
                    titles[s] = spec.splits[s].display or spec.title
    else:
        if with_train:
            present = [s for s in train_splits if _exists(spec, s, root)]
            if not present:
                missing = [_where(spec, s, root) for s in train_splits] or ["(no train split declared)"]
                raise MissingData(f"task {spec.name!r}: training file missing: {', '.join(missing)}")
            for s in present:
                train.extend(_read(spec, s, root, hashes))
        for s in dev_splits:
            if _exists(spec, s, root):
                evals[s] = _read(spec, s, root, hashes)
                titles[s] = spec.splits[s].display or spec.title
            else:
                notes.append(f"{spec.title}: evaluation file missing, skipped: {_where(spec, s, root)}")
        if not evals:
            raise MissingData(f"task {spec.name!r}: no evaluation file present "
                              f"({', '.join(_where(spec, s, root) for s in dev_splits) or 'none declared'})")
    if spec.labels is None and train:
        spec = _with_label_set(spec, train, evals, notes)
    before = len(train)
    train = cap(train, entry.max_train, data_seed, spec.name + "/train")
    if len(train) < before:
        notes.append(f"{spec.title}: training set capped to {len(train)} of {before} examples (data seed {data_seed})")
    for s in list(evals):
        n = len(evals[s])
        evals[s] = cap(evals[s], entry.max_eval, data_seed, f"{spec.name}/{s}")
        if len(evals[s]) < n:
            notes.append(f"{titles[s]}: evaluation set capped to {len(evals[s])} of {n} examples")
    return TaskData(spec, entry, train, evals, titles, notes, hashes, before)


def _with_label_set(spec: TaskSpec, train: list[Example], evals: dict[str, list[Example]], notes: list[str]) -> TaskSpec:
    """A task whose kind may leave its label set undeclared (tagging) takes the one of its (whole, uncapped)
    training file; evaluation alone takes it from the run's saved config."""
    labels = kind_of(spec).infer_labels([e.tags or [] for e in train])
    if labels is None:
        return spec
    spec = TaskSpec.model_validate({**spec.model_dump(), "labels": labels})
    for examples in [train, *evals.values()]:
        assign_tags(spec, examples)
    notes.append(f"{spec.title}: tag set read from the training file ({len(labels)} tags: {', '.join(labels)})")
    return spec


def load_tasks(cfg: RunConfig, with_train: bool = True) -> tuple[list[TaskData], list[str]]:
    """All tasks of a run. Absent GLUE tasks are skipped with a message (or raise, if configured).

    Returns the loaded tasks and the messages about skipped ones.
    """
    glue_dir = cfg.resolved_glue_dir()
    loaded, skipped = [], []
    for entry in cfg.tasks:
        spec = entry.resolve(Path.cwd())
        try:
            loaded.append(load_task(entry, spec, glue_dir, cfg.data_seed, with_train=with_train))
        except MissingData as e:
            if spec.glue and cfg.missing_glue == "skip":
                skipped.append(f"{spec.title}: skipped — {e}")
                log.warning("%s: skipped — %s", spec.title, e)
            else:
                raise
    if not loaded:
        raise MissingData("no task could be loaded:\n  " + "\n  ".join(skipped) +
                          f"\n(GLUE directory: {glue_dir}; set --glue-dir or MANYTASK_GLUE_DIR)")
    return loaded, skipped


def load_test_splits(spec: TaskSpec, glue_dir: Path) -> tuple[dict[str, list[Example]], list[str]]:
    """Unlabeled test files of a task, for submission; missing ones are reported, not fatal."""
    root = spec.split_root(glue_dir)
    out, notes = {}, []
    for name, split in spec.splits.items():
        if split.role != "test":
            continue
        if _exists(spec, name, root):
            out[name] = read_split(spec, name, root)
        else:
            written = split.submission or (f"{spec.name}.tsv" if name == "test" else f"{spec.name}-{name}.tsv")
            notes.append(f"{spec.title}: test file missing, no {written} written: {_where(spec, name, root)}")
    return out, notes
