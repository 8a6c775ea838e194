"""Ensembles of runs that share a task (MeTaL's last rung): the mean of the members' probabilities, a
majority vote, or a mean weighted by each member's score — on its own held-out part where every member has one
(members trained on re-splits), else on the dev set the ensemble is scored on (then the ensemble's dev score is
optimistic, and says so). An ensemble always combines each member's best checkpoint for the task. An ensemble is a directory with
``ensemble.json``; ``eval``, ``predict`` and ``submit`` take it like a run.

Members must agree on the task's kind and label space, and on the ids of the examples they are scored on
(ids are tokenisation-independent, so members may use different encoders). Members trained on re-splits
(``train_members``) are each scored on their own held-out part; the ensemble on the evaluation sets they
share (the official dev set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from manytask.config import ConfigError
from manytask.data.features import targets_of
from manytask.data.loading import load_tasks
from manytask.errors import NotFound
from manytask.evaluation.scoring import score, summarize
from manytask.evaluation.stats import holm, mcnemar_exact
from manytask.io import atomic_write_json
from manytask.kinds import kind_of
from manytask.records import Predictions
from manytask.runs import Run

MODES = ("mean", "vote", "weighted")


class EnsembleError(ConfigError):
    """Members that cannot be combined; the message names the member and what differs."""


def combine(spec, preds: Sequence[Predictions], mode: str, weights: Sequence[float]) -> Predictions:
    """The members' predictions combined by the task's kind (weights normalised to sum to 1)."""
    w = np.asarray(weights, dtype=float)
    return kind_of(spec).combine(preds, mode, w / w.sum())


class Ensemble:
    def __init__(self, path: Path):
        self.path = Path(path)
        meta_path = self.path / "ensemble.json"
        if not meta_path.is_file():
            raise NotFound(f"{self.path} is not an ensemble (no ensemble.json)")
        self.meta = json.loads(meta_path.read_text())
        self.task, self.mode = self.meta["task"], self.meta["mode"]
        self.members = [Run.open(Path(m["run"])) for m in self.meta["members"]]
        self.weights = [m["weight"] for m in self.meta["members"]]
        self.cfg = self.members[0].cfg

    @staticmethod
    def is_ensemble(path: Path) -> bool:
        return (Path(path) / "ensemble.json").is_file()

    @classmethod
    def create(cls, runs: Sequence[Path], task: str, out: Path, mode: str = "mean") -> "Ensemble":
        if mode not in MODES:
            raise EnsembleError(f"mode {mode!r}: one of {', '.join(MODES)}")
        if len(runs) < 2:
            raise EnsembleError("an ensemble needs two or more runs")
        opened = [Run.open(Path(r)) for r in runs]
        specs = []
        for r in opened:
            spec = next((s for s in r.specs() if s.name == task), None)
            if spec is None:
                raise EnsembleError(f"{r.path}: the run has no task {task!r}")
            if not kind_of(spec).ensemblable:
                raise EnsembleError(f"task {task!r}: ensembles of {spec.kind} tasks are not supported")
            specs.append(spec)
        for r, s in zip(opened[1:], specs[1:]):
            if (s.kind, s.labels, s.label_range) != (specs[0].kind, specs[0].labels, specs[0].label_range):
                raise EnsembleError(f"{r.path}: task {task!r} has {s.kind} labels {s.labels or s.label_range}; "
                                    f"{opened[0].path} has {specs[0].labels or specs[0].label_range}")
        ids = [_eval_ids(r, task) for r in opened]
        for r, i in zip(opened[1:], ids[1:]):
            if i != ids[0]:
                raise EnsembleError(f"{r.path}: its evaluation examples for {task!r} differ from {opened[0].path}'s "
                                    f"({len(i)} vs {len(ids[0])} ids, {len(set(i) ^ set(ids[0]))} not shared)")
        scores = [_dev_primary(r, specs[0]) for r in opened]
        held = [_heldout_primary(r, specs[0]) for r in opened]
        weights_from = "held-out" if all(h is not None for h in held) else "dev"
        basis = held if weights_from == "held-out" else scores
        weights = [max(s, 1e-6) for s in basis] if mode == "weighted" else [1.0] * len(opened)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "ensemble.json", {
            "task": task, "mode": mode, "weights_from": weights_from if mode == "weighted" else None,
            "members": [{"run": str(r.path.resolve()), "dev_primary": sc, "heldout_primary": h, "weight": w}
                        for r, sc, h, w in zip(opened, scores, held, weights)]})
        return cls(out)

    @property
    def optimistic(self) -> bool:
        """A weighted ensemble whose weights come from the dev set it is scored on: its score is optimistic."""
        return self.mode == "weighted" and self.meta.get("weights_from") != "held-out"

    # the interface predict_file and write_submission use
    def specs(self):
        return [s for s in self.members[0].specs() if s.name == self.task]

    def predict_examples(self, spec, examples, which: str = "best") -> Predictions:
        return combine(spec, [m.predict_examples(spec, examples, which) for m in self.members], self.mode, self.weights)

    def evaluate(self, which: str = "best") -> dict:
        """Dev metrics of the ensemble and of each member, on the members' shared evaluation sets. An ensemble
        combines each member's best checkpoint for its task, in evaluation as in predict and submit."""
        which = "best"
        data = next(d for d in load_tasks(self.cfg, with_train=False)[0] if d.name == self.task)
        results, members, versus = {}, {}, {}
        for split, examples in data.evals.items():
            if not _shared(split):
                continue
            per_member = [m.predict_examples(data.spec, examples, which) for m in self.members]
            feats = targets_of(data.spec, examples)
            combined = combine(data.spec, per_member, self.mode, self.weights)
            results[split] = score(data.spec, combined, feats, data.eval_titles[split])
            kind = kind_of(data.spec)
            for m, p in zip(self.members, per_member):
                members.setdefault(str(m.path), {})[split] = score(data.spec, p, feats, data.eval_titles[split])
                ens_ok, mem_ok = kind.correct(combined, feats), kind.correct(p, feats)
                if ens_ok is not None:
                    versus.setdefault(str(m.path), {})[split] = _versus(ens_ok, mem_ok)
        titles = {s: t for s, t in data.eval_titles.items() if _shared(s)}
        out = {**summarize({self.task: results}, {self.task: data.spec}), "titles": {self.task: titles},
               "checkpoint": which, "skipped": [], "mode": self.mode,
               "members": {k: summarize({self.task: v}, {self.task: data.spec})["primary"][self.task]
                           for k, v in members.items()},
               "members_heldout": {str(m.path): _heldout(m, self.task) for m in self.members},
               "weights_from": self.meta.get("weights_from"), "optimistic": self.optimistic,
               "versus_members": _holm_over(versus)}
        atomic_write_json(self.path / "eval.json", out)
        return out


def _versus(ens_ok: np.ndarray, mem_ok: np.ndarray) -> dict:
    """The ensemble against one member on one evaluation set: accuracy difference and McNemar's exact test."""
    only_ens, only_member, p = mcnemar_exact(ens_ok, mem_ok)
    return {"accuracy_diff": 100 * float(ens_ok.mean() - mem_ok.mean()), "only_ensemble_right": only_ens,
            "only_member_right": only_member, "p": p}


def _holm_over(versus: dict) -> dict:
    """Holm–Bonferroni over the ensemble-vs-member tests (every member and evaluation set)."""
    keys = [(m, s) for m, per in versus.items() for s in per]
    for (m, s), q in zip(keys, holm([versus[m][s]["p"] for m, s in keys])):
        versus[m][s]["p_holm"] = q
    return versus


def _heldout(run: Run, task: str) -> dict:
    """A re-split member's score on its own held-out part, as its training run recorded it (last step)."""
    results = Path(run.path) / "results.json"
    if not results.exists():
        return {}
    final = json.loads(results.read_text()).get("final") or {}
    return {s: m for s, m in (final.get("tasks", {}).get(task) or {}).items() if not _shared(s)}


def _heldout_primary(run: Run, spec) -> "float | None":
    """A re-split member's primary score on its own held-out part (none for a member without one)."""
    held = _heldout(run, spec.name)
    return float(np.mean([m[spec.primary] for m in held.values()])) if held else None


def _dev_primary(run: Run, spec) -> float:
    """A member's primary dev score (its best checkpoint), without writing into its directory."""
    data = next(d for d in load_tasks(run.cfg, with_train=False)[0] if d.name == spec.name)
    results = {split: score(spec, run.predict_examples(spec, ex), targets_of(spec, ex), data.eval_titles[split])
               for split, ex in data.evals.items() if _shared(split)}
    return summarize({spec.name: results}, {spec.name: spec})["primary"][spec.name]


def _shared(split: str) -> bool:
    return not split.endswith("_heldout")  # a member's own held-out part is its own, not the ensemble's


def _eval_ids(run: Run, task: str) -> list[str]:
    data = next((d for d in load_tasks(run.cfg, with_train=False)[0] if d.name == task), None)
    if data is None:
        raise EnsembleError(f"{run.path}: task {task!r} has no evaluation data here")
    ids = [e.id for split in sorted(data.evals) if _shared(split) for e in data.evals[split]]
    if not ids:
        raise EnsembleError(f"{run.path}: task {task!r} has no evaluation set shared with other members "
                            "(re-split members need resplit.keep_dev)")
    return ids


def train_members(cfg, task: str, k: int, out: Path, fraction: float = 0.2, mode: str = "mean") -> "Ensemble":
    """MeTaL against dev over-fitting: k members, member i trained with seed i on a seeded hold-out re-split
    of the training set (seed i), each scored on its own held-out part and on the official dev set; then
    their ensemble, scored on the official dev set."""
    from manytask.config import Resplit
    from manytask.runs import train_run

    out = Path(out)
    runs = []
    for i in range(k):
        member = cfg.model_copy(deep=True)
        member.seed = cfg.seed + i
        for t in member.tasks:
            if t.name == task:
                t.resplit = Resplit(source="train", dev_fraction=fraction, seed=i, keep_dev=True)
        run_dir = out / f"member-{i}"
        train_run(member, run_dir, resume=(run_dir / "config.yaml").exists())
        runs.append(run_dir)
    return Ensemble.create(runs, task, out / "ensemble", mode)

