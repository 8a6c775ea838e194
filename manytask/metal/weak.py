"""Programmatic weak supervision (Snorkel): labeling functions vote on unlabelled text, Snorkel's label model
combines their votes into probabilistic labels, and those become a teacher-target store, so any recipe can
train on them with the soft-target losses (``distill: {targets: OUT/targets, schedule: constant, lam: 0}``).

A labeling function is declared like a slicing function plus the ``label`` it votes when its predicate
holds (it abstains otherwise), or is ``module:function`` returning a label or None. Each function's
coverage, overlaps, conflicts and, on a labelled split, accuracy are reported as Snorkel's LF analysis does.

    OUT/train.jsonl      the unlabelled examples with an ``id`` and the label model's most likely label
    OUT/targets/         <task>.safetensors: log-probabilities of the label model, keyed by example id
    OUT/weak.json, weak.md   the LF analysis and the label model's accuracy where gold labels exist
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field as PydanticField

from manytask.config import ConfigError, SliceFunction, TaskEntry, load_model
from manytask.data.readers import read_split
from manytask.data.slices import predicate
from manytask.data.target_store import TeacherTargets, targets_path
from manytask.hooks import load_hook
from manytask.io import atomic_write_json, atomic_write_text
from manytask.kinds import kind_of
from manytask.records import Example
from manytask.tasks import SplitSpec, StrictModel, TaskSpec

ABSTAIN = -1
INSTALL = "pip install -e '.[weak]'"


class LabelingFunction(SliceFunction):
    label: Optional[str] = None  # the vote when the predicate holds; a function LF returns its own


class LabelModelConfig(StrictModel):
    epochs: int = 500
    lr: float = 0.01
    seed: int = 0


class WeakConfig(StrictModel):
    task: TaskEntry  # the task whose label space the functions vote in (a GLUE name or a user task)
    unlabeled: str  # a file with the task's text fields (any label column is ignored)
    gold: Optional[str] = "dev"  # a labelled split of the task to measure the functions and the label model on
    functions: list[LabelingFunction] = PydanticField(min_length=1)
    label_model: LabelModelConfig = LabelModelConfig()


class WeakError(ConfigError):
    """A labeling function that cannot be applied, or votes a label the task does not have."""


def apply(functions: list[LabelingFunction], spec: TaskSpec, examples: list[Example]) -> np.ndarray:
    """The votes matrix [examples, functions]: a label index, or -1 (abstain)."""
    index = {l: i for i, l in enumerate(spec.labels or [])}
    L = np.full((len(examples), len(functions)), ABSTAIN, dtype=int)
    for j, fn in enumerate(functions):
        if fn.kind == "function":
            user = load_hook(fn.function, f"labeling function {fn.name!r}", WeakError)  # type: ignore[arg-type]
            vote = lambda e: user(e.text_a, e.text_b)  # noqa: E731
        else:
            if fn.label is None:
                raise WeakError(f"labeling function {fn.name!r}: give the 'label' it votes")
            test = predicate(fn)
            vote = lambda e, test=test, label=fn.label: label if test(e) else None  # noqa: E731
        for i, e in enumerate(examples):
            try:
                label = vote(e)
            except Exception as err:
                raise WeakError(f"labeling function {fn.name!r} failed on example {e.id}: "
                                f"{type(err).__name__}: {err}") from None
            if label is None:
                continue
            if str(label) not in index:
                raise WeakError(f"labeling function {fn.name!r} voted {label!r} on example {e.id}: not a label of "
                                f"task {spec.name!r} ({spec.labels})")
            L[i, j] = index[str(label)]
    return L


def analysis(L: np.ndarray, names: list[str], gold: Optional[np.ndarray] = None) -> list[dict]:
    """Per function: polarity, coverage, overlaps, conflicts, and (with gold) correct, incorrect, accuracy."""
    from snorkel.labeling import LFAnalysis

    table = LFAnalysis(L).lf_summary(Y=gold)
    rows = []
    for name, (_, r) in zip(names, table.iterrows()):
        row = {"function": name, "polarity": [int(x) for x in r["Polarity"]], "coverage": float(r["Coverage"]),
               "overlaps": float(r["Overlaps"]), "conflicts": float(r["Conflicts"])}
        if gold is not None:
            row.update(correct=int(r["Correct"]), incorrect=int(r["Incorrect"]),
                       accuracy=None if math.isnan(r["Emp. Acc."]) else float(r["Emp. Acc."]))
        rows.append(row)
    return rows


def run_weak(cfg: WeakConfig, out: Path, glue_dir: Path) -> dict:
    try:
        from snorkel.labeling.model import LabelModel
    except ImportError:
        raise WeakError(f"weak supervision needs Snorkel's label model: install it with {INSTALL}") from None
    out = Path(out)
    spec = cfg.task.resolve(Path.cwd())
    if not kind_of(spec).class_labels:
        raise WeakError(f"task {spec.name!r}: labeling functions vote class labels; it is a {spec.kind} task")
    source = spec.model_copy(update={"splits": {"unlabeled": SplitSpec(path=str(Path(cfg.unlabeled).resolve()),
                                                                         role="train", unlabeled=True)},
                                     "quoting": None if spec.glue else spec.quoting, "id_field": None})
    examples = read_split(source, "unlabeled", Path("."))
    names = [f.name for f in cfg.functions]
    L = apply(cfg.functions, spec, examples)
    if (L == ABSTAIN).all():
        raise WeakError("every labeling function abstained on every example: nothing to learn from")
    model = LabelModel(cardinality=len(spec.labels or []), verbose=False)
    model.fit(L, n_epochs=cfg.label_model.epochs, lr=cfg.label_model.lr, seed=cfg.label_model.seed, progress_bar=False)
    probs = model.predict_proba(L)
    report = {"task": spec.name, "examples": len(examples), "functions": analysis(L, names),
              "covered": float((L != ABSTAIN).any(1).mean())}
    if cfg.gold:
        gold_examples = read_split(spec, cfg.gold, spec.split_root(glue_dir))
        gold = np.array([e.label for e in gold_examples])
        L_gold = apply(cfg.functions, spec, gold_examples)
        report["gold"] = {"split": cfg.gold, "examples": len(gold_examples),
                          "functions": analysis(L_gold, names, gold),
                          "label_model_accuracy": float((model.predict_proba(L_gold).argmax(1) == gold).mean()),
                          "majority_vote_accuracy": _majority_accuracy(L_gold, gold)}
    ids = [f"{spec.name}/train/{i}" for i in range(len(examples))]
    rows = []
    for i, e in enumerate(examples):
        row = {"id": str(i), "label": spec.labels[int(probs[i].argmax())]}  # type: ignore[index]
        for field, text in zip(spec.text_fields, (e.text_a, e.text_b)):
            row[str(field)] = text
        rows.append(json.dumps(row))
    atomic_write_text(out / "train.jsonl", "\n".join(rows) + "\n")
    logits = np.log(np.clip(probs, 1e-6, 1.0)).astype(np.float32)
    TeacherTargets(spec.name, spec.kind, spec.labels, ids, logits,
                   {"label_model": "snorkel LabelModel", "functions": names}).save(targets_path(out / "targets", spec.name))
    report["student_entry"] = student_entry(spec, out, glue_dir)
    atomic_write_json(out / "weak.json", report)
    atomic_write_text(out / "weak.md", markdown(report))
    return report


def student_entry(spec: TaskSpec, out: Path, glue_dir: Path) -> dict:
    """A task entry that trains on the weak labels (with ``distill`` on OUT/targets) and is scored on the
    task's own dev set (read by the task's own rules)."""
    fields = [str(f) for f in spec.text_fields]
    splits = {"train": {"path": str((out / "train.jsonl").resolve()), "role": "train", "id_field": "id",
                        "text_fields": fields, "label_field": "label"}}
    for name, split in spec.splits.items():
        if split.role == "dev":
            root = spec.split_root(glue_dir) if spec.glue else Path(".")
            splits[name] = {"path": str((root / split.path).resolve()), "role": "dev", "header": split.header,
                            "text_fields": split.text_fields or spec.text_fields, "label_field": spec.label_field}
    return {"name": spec.name, "kind": spec.kind, "splits": splits, "text_fields": spec.text_fields,
            "label_field": spec.label_field, "labels": spec.labels, "metrics": spec.metrics,
            **({"quoting": False} if spec.glue else {})}


def _majority_accuracy(L: np.ndarray, gold: np.ndarray) -> float:
    votes = [np.bincount(row[row != ABSTAIN]).argmax() if (row != ABSTAIN).any() else -1 for row in L]
    return float((np.asarray(votes) == gold).mean())


def markdown(report: dict) -> str:
    lines = [f"# Weak supervision for `{report['task']}`", "",
             f"{report['examples']} unlabelled examples; {100 * report['covered']:.1f}% have at least one vote.", "",
             "| function | polarity | coverage | overlaps | conflicts |", "|---|---|---|---|---|"]
    for r in report["functions"]:
        lines.append(f"| {r['function']} | {r['polarity']} | {r['coverage']:.3f} | {r['overlaps']:.3f} | "
                     f"{r['conflicts']:.3f} |")
    lines += ["", "Train on the weak labels with this task entry and `distill: {targets: <OUT>/targets, schedule: "
              "constant, lam: 0.0}` (pure soft targets):", "", "```yaml", json.dumps(report["student_entry"]), "```"]
    gold = report.get("gold")
    if gold:
        lines += ["", f"On `{gold['split']}` ({gold['examples']} labelled examples): label model accuracy "
                      f"{100 * gold['label_model_accuracy']:.1f}%, majority vote {100 * gold['majority_vote_accuracy']:.1f}% "
                      "(unvoted examples count as wrong).", "",
                  "| function | coverage | correct | incorrect | accuracy |", "|---|---|---|---|---|"]
        for r in gold["functions"]:
            acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            lines.append(f"| {r['function']} | {r['coverage']:.3f} | {r['correct']} | {r['incorrect']} | {acc} |")
    return "\n".join(lines) + "\n"


def load_weak(path: Path, overrides=None) -> WeakConfig:
    return load_model(WeakConfig, path, overrides, what="weak-supervision config")
