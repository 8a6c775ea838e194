"""Write predictions for a user's file, and the GLUE leaderboard files (index<TAB>prediction).

Works for anything with ``specs()``, ``cfg`` and ``predict_examples(spec, examples)``: a run or an ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from manytask.data.loading import load_test_splits
from manytask.data.readers import infer_format, read_split
from manytask.evaluation.predict import Predictions
from manytask.tasks import Field, SplitSpec, TaskSpec
from manytask.training.checkpoint import atomic_write_text


def _label_of(spec: TaskSpec, value) -> str:
    """The prediction as text (TSV files): a label, or a score with 3 decimals."""
    if spec.kind == "classification":
        return spec.labels[int(value)]  # type: ignore[index]
    return f"{float(value):.3f}"


def _json_value(spec: TaskSpec, value):
    """The prediction as a JSON value: a label (string), or a score (number)."""
    if spec.kind == "classification":
        return spec.labels[int(value)]  # type: ignore[index]
    return round(float(value), 6)


def input_spec(spec: TaskSpec, path: Path, text_fields: Optional[list[Field]], id_field: Optional[str],
               fmt: Optional[str]) -> TaskSpec:
    """A one-split task that reads an unlabeled input file with the task's text columns."""
    test = next((s for s in spec.splits.values() if s.role == "test"), None)
    fields = text_fields or (test.text_fields if test and test.text_fields else None) or spec.text_fields
    if spec.kind == "tagging" and not text_fields and infer_format(path, fmt) == "jsonl":
        own = {infer_format(Path(s.path), spec.format) for s in spec.splits.values()}
        if own != {"jsonl"}:
            fields = ["tokens"]  # a task trained on CoNLL files reads {"tokens": [...]} lines
    header = not all(isinstance(f, int) for f in fields)
    split = SplitSpec(path=str(path.resolve()), role="test", unlabeled=True, header=header, text_fields=fields,
                      id_field=id_field)
    # a user's file for a GLUE task is read by its own format's rules (CSV honours quotes), not GLUE's
    quoting = None if spec.glue else spec.quoting
    return spec.model_copy(update={"splits": {"input": split}, "format": fmt or None, "id_field": None,
                                   "quoting": quoting})


def predict_file(run, task: str, input_path: Path, output: Path, text_fields=None, id_field=None,
                 fmt=None) -> int:
    """One prediction per input record of ``input_path`` (every record is read, or the file is refused
    naming the line at fault); JSONL (.jsonl) or TSV output. Returns the count."""
    specs = {s.name: s for s in run.specs()}
    if task not in specs:
        raise KeyError(f"unknown task {task!r}: the run has {', '.join(specs)}")
    spec = input_spec(specs[task], Path(input_path), text_fields, id_field, fmt)
    examples = read_split(spec, "input", Path("."))
    preds = run.predict_examples(spec, examples)
    output = Path(output)
    if spec.kind == "tagging":
        _write_tags(spec, examples, preds, output)
    elif output.suffix.lower() == ".jsonl":
        rows = []
        for i, e in enumerate(examples):
            row = {"id": e.key, "prediction": _json_value(spec, preds.values[i])}
            if preds.probs is not None:
                row["probabilities"] = {lab: round(float(p), 6) for lab, p in zip(spec.labels, preds.probs[i])}
            rows.append(json.dumps(row))
        atomic_write_text(output, "\n".join(rows) + "\n")
    else:
        lines = ["id\tprediction" + ("".join(f"\tp_{lab}" for lab in spec.labels) if preds.probs is not None else "")]
        for i, e in enumerate(examples):
            probs = "".join(f"\t{p:.6f}" for p in preds.probs[i]) if preds.probs is not None else ""
            lines.append(f"{e.key}\t{_label_of(spec, preds.values[i])}{probs}")
        atomic_write_text(output, "\n".join(lines) + "\n")
    return len(examples)


def _tag(spec: TaskSpec, value) -> Optional[str]:
    return None if value is None else spec.labels[value]  # type: ignore[index]


def _write_tags(spec: TaskSpec, examples, preds: Predictions, output: Path) -> None:
    """Per word its tag: JSONL (tokens, tags, and each chosen tag's probability), or CoNLL (word TAB tag).
    A word beyond the length limit has no prediction: null in JSONL, ``_`` in CoNLL."""
    if output.suffix.lower() == ".jsonl":
        rows = [json.dumps({"id": e.key, "tokens": e.words, "tags": [_tag(spec, v) for v in preds.values[i]],
                            "probabilities": [None if p is None else round(p, 6) for p in preds.probs[i]]})
                for i, e in enumerate(examples)]
        atomic_write_text(output, "\n".join(rows) + "\n")
        return
    blocks = ["\n".join(f"{w}\t{_tag(spec, v) or '_'}" for w, v in zip(e.words, preds.values[i]))
              for i, e in enumerate(examples)]
    atomic_write_text(output, "\n\n".join(blocks) + "\n")


def write_submission(run, out_dir: Path) -> tuple[list[str], list[str]]:
    """Prediction files for the test splits of the run's tasks: GLUE's leaderboard files (CoLA.tsv, ...,
    AX.tsv) and ``<task>.tsv`` for a user task's ``test:`` file (ids from its ``id_field``, else line
    numbers). Returns (files written, why any task got none)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    glue_dir = run.cfg.resolved_glue_dir()
    written, notes = [], []
    for spec in run.specs():
        test_splits = [n for n, s in spec.splits.items() if s.role == "test"]
        if not test_splits:
            notes.append(f"{spec.title}: no test file in the task's entry (give 'test: FILE' to get {spec.name}.tsv)")
            continue
        tests, missing = load_test_splits(spec, glue_dir)
        notes.extend(missing)
        if not tests:
            continue
        for split, examples in tests.items():
            name = spec.splits[split].submission or (f"{spec.name}.tsv" if split == "test" else f"{spec.name}-{split}.tsv")
            preds: Predictions = run.predict_examples(spec, examples)
            if spec.kind == "tagging":  # one line a sentence: its tags, space-separated
                body = ["index\tprediction"] + [f"{e.key}\t{' '.join(_tag(spec, v) or '_' for v in tags)}"
                                                for e, tags in zip(examples, preds.values)]
            else:
                body = ["index\tprediction"] + [f"{e.key}\t{_label_of(spec, v)}" for e, v in zip(examples, preds.values)]
            atomic_write_text(out_dir / name, "\n".join(body) + "\n")
            written.append(name)
    return written, notes
