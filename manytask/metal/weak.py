"""Programmatic weak supervision (Snorkel): labeling functions vote on unlabelled text, Snorkel's label model
combines their votes into probabilistic labels, and those become a teacher-target store, so any recipe can
train on them with the soft-target losses (``distill: {targets: OUT/targets, schedule: constant, lam: 0}``).

A labeling function is declared like a slicing function plus the ``label`` it votes when its predicate
holds (it abstains otherwise), or is ``module:function`` returning a label or None. Each function's
coverage, overlaps, conflicts and, on a labelled split, accuracy are reported as Snorkel's LF analysis does.

    OUT/train.jsonl      the unlabelled examples some function covered, with an ``id`` and the label model's label
    OUT/targets/         <task>.safetensors: log-probabilities of the label model, keyed by example id
    OUT/weak.json, weak.md   the LF analysis, and label model against majority vote on gold labels
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


MIN_FUNCTIONS = 3  # Snorkel's label model needs at least three labeling functions


def compare_on_gold(L: np.ndarray, gold: np.ndarray, label_model) -> dict:
    """Label model against majority vote on a labelled split, on Snorkel's own basis: both predict with ties
    (and rows no function covers) abstaining, and each is scored on the rows it predicts; then both on the rows
    *both* predict, the fair comparison. Coverage is the share of rows a method predicts."""
    from snorkel.labeling.model import MajorityLabelVoter

    voter = MajorityLabelVoter(cardinality=label_model.cardinality)
    preds = {"label_model": label_model.predict(L, tie_break_policy="abstain"),
             "majority_vote": voter.predict(L, tie_break_policy="abstain")}
    both = (preds["label_model"] != ABSTAIN) & (preds["majority_vote"] != ABSTAIN)
    out: dict = {"rows": len(gold), "shared_rows": int(both.sum())}
    for name, p in preds.items():
        own = p != ABSTAIN
        out[name] = {"coverage": float(own.mean()),
                     "accuracy": float((p[own] == gold[own]).mean()) if own.any() else None,
                     "accuracy_shared": float((p[both] == gold[both]).mean()) if both.any() else None}
    lm, mv = out["label_model"]["accuracy_shared"], out["majority_vote"]["accuracy_shared"]
    out["winner"] = None if lm is None or mv is None or lm == mv else ("label model" if lm > mv else "majority vote")
    return out


def run_weak(cfg: WeakConfig, out: Path, glue_dir: Path) -> dict:
    """Apply the labeling functions to the unlabelled file, fit Snorkel's label model (its class balance from the
    gold split when there is one), and keep the examples at least one function covered (Snorkel's
    ``filter_unlabeled_dataframe``): they become ``train.jsonl`` and the teacher-target store."""
    try:
        from snorkel.labeling.model import LabelModel
    except ImportError:
        raise WeakError(f"weak supervision needs Snorkel's label model: install it with {INSTALL}") from None
    out = Path(out)
    spec = cfg.task.resolve(Path.cwd())
    if not kind_of(spec).class_labels:
        raise WeakError(f"task {spec.name!r}: labeling functions vote class labels; it is a {spec.kind} task")
    if len(cfg.functions) < MIN_FUNCTIONS:
        raise WeakError(f"Snorkel's label model needs at least {MIN_FUNCTIONS} labeling functions "
                        f"(got {len(cfg.functions)}: {', '.join(f.name for f in cfg.functions)})")
    source = spec.model_copy(update={"splits": {"unlabeled": SplitSpec(path=str(Path(cfg.unlabeled).resolve()),
                                                                         role="train", unlabeled=True)},
                                     "quoting": None if spec.glue else spec.quoting, "id_field": None})
    examples = read_split(source, "unlabeled", Path("."))
    names = [f.name for f in cfg.functions]
    L = apply(cfg.functions, spec, examples)
    covered = (L != ABSTAIN).any(1)
    if not covered.any():
        raise WeakError("every labeling function abstained on every example: nothing to learn from")
    gold_examples = read_split(spec, cfg.gold, spec.split_root(glue_dir)) if cfg.gold else None
    gold = np.array([e.label for e in gold_examples]) if gold_examples else None
    model = LabelModel(cardinality=len(spec.labels or []), verbose=False)
    model.fit(L, Y_dev=gold, n_epochs=cfg.label_model.epochs, lr=cfg.label_model.lr, seed=cfg.label_model.seed,
              progress_bar=False)
    report = {"task": spec.name, "examples": len(examples), "functions": analysis(L, names),
              "covered": float(covered.mean()), "kept": int(covered.sum()), "dropped": int((~covered).sum()),
              "class_balance": "from the gold split" if gold is not None else "learnt from the votes"}
    if gold is not None:
        L_gold = apply(cfg.functions, spec, gold_examples)
        report["gold"] = {"split": cfg.gold, "examples": len(gold_examples), "functions": analysis(L_gold, names, gold),
                          **compare_on_gold(L_gold, gold, model)}
    keep = np.flatnonzero(covered)  # an uncovered example has no weak label: it would teach the first class
    probs = model.predict_proba(L[keep])
    rows = []
    for i, p in zip(keep, probs):
        row = {"id": str(i), "label": spec.labels[int(p.argmax())]}  # type: ignore[index]
        for field, text in zip(spec.text_fields, (examples[i].text_a, examples[i].text_b)):
            row[str(field)] = text
        rows.append(json.dumps(row))
    atomic_write_text(out / "train.jsonl", "\n".join(rows) + "\n")
    logits = np.log(np.clip(probs, 1e-6, 1.0)).astype(np.float32)
    TeacherTargets(spec.name, spec.kind, spec.labels, [f"{spec.name}/train/{i}" for i in keep], logits,
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


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict) -> str:
    lines = [f"# Weak supervision for `{report['task']}`", "",
             f"{report['examples']} unlabelled examples; {100 * report['covered']:.1f}% have at least one vote: "
             f"{report['kept']} kept for training, {report['dropped']} dropped (no function covers them). Class "
             f"balance {report['class_balance']}.", "",
             "| function | polarity | coverage | overlaps | conflicts |", "|---|---|---|---|---|"]
    for r in report["functions"]:
        lines.append(f"| {r['function']} | {r['polarity']} | {r['coverage']:.3f} | {r['overlaps']:.3f} | "
                     f"{r['conflicts']:.3f} |")
    lines += ["", "Train on the weak labels with this task entry and `distill: {targets: <OUT>/targets, schedule: "
              "constant, lam: 0.0}` (pure soft targets):", "", "```yaml", json.dumps(report["student_entry"]), "```"]
    gold = report.get("gold")
    if gold:
        lm, mv = gold["label_model"], gold["majority_vote"]
        verdict = f"the {gold['winner']} wins" if gold["winner"] else "neither wins"
        lines += ["", f"On `{gold['split']}` ({gold['examples']} labelled examples), ties and uncovered rows abstaining "
                      f"(Snorkel's `score`): {verdict} on the {gold['shared_rows']} rows both predict.", "",
                  "| method | coverage | accuracy on its own rows | accuracy on the shared rows |", "|---|---|---|---|",
                  f"| label model | {_pct(lm['coverage'])} | {_pct(lm['accuracy'])} | {_pct(lm['accuracy_shared'])} |",
                  f"| majority vote | {_pct(mv['coverage'])} | {_pct(mv['accuracy'])} | "
                  f"{_pct(mv['accuracy_shared'])} |", "",
                  "| function | coverage | correct | incorrect | accuracy |", "|---|---|---|---|---|"]
        for r in gold["functions"]:
            acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            lines.append(f"| {r['function']} | {r['coverage']:.3f} | {r['correct']} | {r['incorrect']} | {acc} |")
    return "\n".join(lines) + "\n"


def load_weak(path: Path, overrides=None) -> WeakConfig:
    return load_model(WeakConfig, path, overrides, what="weak-supervision config")
