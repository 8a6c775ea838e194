"""What the server calls: tokenise a batch, run the model for some tasks, turn logits into answers.

``MergedPredictor`` serves a bundle: the trunk runs once per batch, then only the branches asked
for. Tasks are changed by building a new snapshot (sharing every module) and swapping one
reference, so a batch sees either the old or the new task set, never a mix.
``SeparatePredictor`` serves one full model per task, the baseline the merged bundle is measured against.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import torch

from manytask.data.features import encode_words
from manytask.training.devices import autocast
from manytask.models.multitask import MultiTaskModel
from manytask.serving.bundle import Bundle, TaskPackage
from manytask.tasks import TaskSpec


def tokenize(tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]], max_length: int) -> dict:
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length,
                    padding=True, return_tensors="pt", return_token_type_ids=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"]}


def tokenize_words(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """Raw texts split on whitespace into words, as tagging data is given; each word's first piece is kept
    (``first_piece``, -1 for a word beyond the length limit). For BERT's tokenizer the token ids are the
    same as tokenising the raw text, so sentence tasks asked in the same request read the same input."""
    words = [t.split() for t in texts]
    enc, firsts = encode_words(words, tokenizer, max_length)
    padded = tokenizer.pad({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]},
                           return_tensors="pt")
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
            "token_type_ids": padded["token_type_ids"], "words": words, "first_piece": firsts}


def _select(batch: dict, rows: list[int]) -> dict:
    """The word lists of the chosen rows (tagging answers read them), in the rows' order."""
    if "words" not in batch:
        return batch
    return {**batch, "words": [batch["words"][i] for i in rows], "first_piece": [batch["first_piece"][i] for i in rows]}


def answer(spec: TaskSpec, logits: torch.Tensor, batch: Optional[dict] = None) -> list[dict]:
    """Per input: label and probabilities (classification), the score on the task's own range (regression),
    or the words with their tags and each tag's probability (tagging; null for a word beyond the limit)."""
    logits = logits.float()
    if spec.kind == "tagging":
        probs = torch.softmax(logits, dim=-1)
        best_p, best = probs.max(dim=-1)
        out = []
        for row, (words, first) in enumerate(zip(batch["words"], batch["first_piece"])):  # type: ignore[index]
            out.append({"tokens": words,
                        "tags": [spec.labels[int(best[row, p])] if p >= 0 else None for p in first],  # type: ignore[index]
                        "probs": [float(best_p[row, p]) if p >= 0 else None for p in first]})
        return out
    if spec.kind == "classification":
        probs, best = torch.softmax(logits, dim=-1).tolist(), logits.argmax(dim=-1).tolist()
        return [{"label": spec.labels[i], "probs": dict(zip(spec.labels, p))}  # type: ignore[index, arg-type]
                for i, p in zip(best, probs)]
    return [{"score": spec.unscale(v)} for v in torch.sigmoid(logits.reshape(-1)).tolist()]


class Predictor:
    tokenizer = None
    max_length: int = 128
    device = torch.device("cpu")
    precision: str = "fp32"  # autocast precision (int8 is applied to the weights at load instead)

    def snapshot(self):
        """The current model version; a request is validated against it and run with it."""
        return None

    def specs(self, snapshot=None) -> dict[str, TaskSpec]:
        raise NotImplementedError

    def logits(self, batch: dict, tasks: list[str], snapshot=None, rows=None) -> dict[str, torch.Tensor]:
        """Logits per task, of the rows that asked for it (``rows``: task -> row indices; None: every row)."""
        raise NotImplementedError

    def layers_run(self, tasks: list[str]) -> int:
        raise NotImplementedError

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], pairs: Optional[Sequence[str]], tasks: list[str], snapshot=None,
                rows: Optional[dict[str, list[int]]] = None) -> list[dict]:
        """Per input, the answers of the tasks it asked for: every task in ``tasks``, or (``rows``) the tasks
        whose row list holds it — one forward pass for a batch whose requests asked different tasks."""
        specs = self.specs(snapshot)
        if any(specs[t].kind == "tagging" for t in tasks) and pairs is None:
            batch = tokenize_words(self.tokenizer, texts, self.max_length)
        else:
            batch = tokenize(self.tokenizer, texts, pairs, self.max_length)
        rows = rows if rows is not None else {t: list(range(len(texts))) for t in tasks}
        tensors = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        index = {t: torch.tensor(r, dtype=torch.long, device=self.device) for t, r in rows.items()}
        with autocast(self.precision, self.device.type):
            out = {t: v.float().cpu() for t, v in self.logits(tensors, tasks, snapshot, index).items()}
        answers: list[dict] = [{} for _ in texts]
        for t in tasks:
            sub = _select(batch, rows[t])
            for i, a in zip(rows[t], answer(specs[t], out[t], sub)):
                answers[i][t] = a
        return answers


class MergedPredictor(Predictor):
    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32"):
        from manytask.serving.precision import check, quantize_model
        from manytask.training.devices import resolve_device

        self.bundle = bundle
        self.tokenizer = bundle.tokenizer()
        self.max_length = bundle.manifest["trunk"]["max_seq_length"]
        self.device = resolve_device(device)
        check(precision, self.device)
        self.weights = precision  # fp32, bf16 or int8
        self.precision = "bf16" if precision == "bf16" else "fp32"  # what autocast runs
        self.model: MultiTaskModel = bundle.merged_model().to(self.device)
        if precision == "int8":
            quantize_model(self.model)
        self.served = self._served_dirs()
        self.bundle_trunk = bundle.manifest["trunk"]["sha256"]
        self._write = threading.Lock()

    def snapshot(self) -> MultiTaskModel:
        return self.model

    def specs(self, snapshot: Optional[MultiTaskModel] = None) -> dict[str, TaskSpec]:
        return dict((snapshot or self.model).specs)

    def logits(self, batch: dict, tasks: list[str], snapshot: Optional[MultiTaskModel] = None,
               rows=None) -> dict[str, torch.Tensor]:
        model = snapshot or self.model  # one reference read: the whole batch uses one snapshot
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=tasks, rows=rows)

    def layers_run(self, tasks: list[str]) -> int:
        return self.model.layers_run(tasks)

    def put(self, pkg: TaskPackage) -> dict:
        """Write the task into the bundle, then swap in a snapshot that has it."""
        with self._write:
            entry = self.bundle.put(pkg, model=self.model)  # checked on the served trunk before it is written
            fresh = self.model.share([n for n in self.model.task_names if n != pkg.spec.name])
            self.bundle.package(pkg.spec.name).attach(fresh)  # read back what was written
            if self.weights == "int8" and pkg.spec.name in fresh.branches:
                from manytask.serving.precision import quantize

                quantize(fresh.branches[pkg.spec.name])
            self.model = fresh.to(self.device).eval()
            self.served = {**self.served, pkg.spec.name: entry["dir"]}
            return entry

    def remove(self, name: str) -> None:
        with self._write:
            self.bundle.remove(name)
            self.model = self.model.share([n for n in self.model.task_names if n != name]).eval()
            self.served = {n: d for n, d in self.served.items() if n != name}

    def _served_dirs(self) -> dict[str, str]:
        return {n: e["dir"] for n, e in self.bundle.manifest["tasks"].items()}

    def refresh(self) -> list[str]:
        """Follow changes another process made to the bundle (``manytask bundle ...``, another replica): swap
        in a snapshot with the changed tasks re-read, the removed ones dropped. Returns what changed."""
        with self._write:
            manifest = self.bundle.manifest
            if manifest["trunk"]["sha256"] != self.bundle_trunk:
                raise RuntimeError(f"{self.bundle.root}: the bundle's trunk changed; restart the server")
            now = {n: e["dir"] for n, e in manifest["tasks"].items()}
            changed = sorted(n for n in now if self.served.get(n) != now[n])
            removed = sorted(set(self.served) - set(now))
            if not changed and not removed:
                return []
            fresh = self.model.share([n for n in self.model.task_names if n in now and n not in changed])
            for name in changed:
                self.bundle.package(name).attach(fresh)
                if self.weights == "int8" and name in fresh.branches:
                    from manytask.serving.precision import quantize

                    quantize(fresh.branches[name])
            self.model = fresh.to(self.device).eval()
            self.served = now
            return changed + [f"-{n}" for n in removed]


class SeparatePredictor(Predictor):
    """One full single-task model per task (e.g. full fine-tuning runs): every task runs all L layers."""

    def __init__(self, runs: dict[str, Path], device: str = "cpu", precision: str = "fp32"):
        from manytask.runs import Run
        from manytask.serving.precision import check, quantize_model
        from manytask.training.devices import resolve_device

        self.device = resolve_device(device)
        check(precision, self.device)
        self.weights, self.precision = precision, ("bf16" if precision == "bf16" else "fp32")
        self.models: dict[str, MultiTaskModel] = {}
        for task, run_dir in runs.items():
            run = Run.open(run_dir)
            if task not in {s.name for s in run.specs()}:
                raise ValueError(f"{run_dir}: the run has no task {task!r} "
                                 f"(has: {', '.join(s.name for s in run.specs())})")
            self.models[task] = run.model_for(task).to(self.device).eval()
            if precision == "int8":
                quantize_model(self.models[task])  # each task its own quantised model: the baseline a user would build
            self.tokenizer = run.tokenizer()
            self.max_length = run.cfg.model.max_seq_length

    def specs(self, snapshot=None) -> dict[str, TaskSpec]:
        return {t: m.specs[t] for t, m in self.models.items()}

    def logits(self, batch: dict, tasks: list[str], snapshot=None, rows=None) -> dict[str, torch.Tensor]:
        out = {}
        for t in tasks:
            r = rows[t] if rows is not None else slice(None)  # each task's own model runs only on its rows
            out[t] = self.models[t](batch["input_ids"][r], batch["attention_mask"][r], batch["token_type_ids"][r],
                                    tasks=[t])[t]
        return out

    def layers_run(self, tasks: list[str]) -> int:
        return sum(self.models[t].layers_run([t]) for t in tasks)
