"""Write predictions for a user's file, and the GLUE leaderboard files (index<TAB>prediction).

Works for anything with ``specs()``, ``cfg`` and ``predict_examples(spec, examples)``: a run or an ensemble.
Each line is the task's kind's (``TaskKind.prediction_file``, ``TaskKind.cell``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from manytask.data.loading import load_test_splits
from manytask.data.readers import infer_format, read_split
from manytask.errors import UnknownTask
from manytask.io import atomic_write_text
from manytask.kinds import kind_of
from manytask.records import Prediction
from manytask.tasks import Field, SplitSpec, TaskSpec


def input_spec(spec: TaskSpec, path: Path, text_fields: Optional[list[Field]], id_field: Optional[str],
               fmt: Optional[str]) -> TaskSpec:
    """A one-split task that reads an unlabeled input file with the task's text columns."""
    test = next((s for s in spec.splits.values() if s.role == "test"), None)
    fields = text_fields or (test.text_fields if test and test.text_fields else None) or spec.text_fields
    default_words = kind_of(spec).default_fields[0]
    if default_words and not text_fields and infer_format(path, fmt) in ("jsonl", "rows", "parquet", "hf_disk"):
        own = {s.format or (infer_format(Path(s.path), spec.format) if s.path else "hf") for s in spec.splits.values()}
        if "conll" in own:
            fields = default_words  # a task trained on CoNLL files reads {"tokens": [...]} records
    header = not all(isinstance(f, int) for f in fields)
    split = SplitSpec(path=str(path.resolve()), role="test", unlabeled=True, header=header, text_fields=fields,
                      id_field=id_field)
    # a user's file for a GLUE task is read by its own format's rules (CSV honours quotes), not GLUE's
    quoting = None if spec.glue else spec.quoting
    return spec.model_copy(update={"splits": {"input": split}, "format": fmt or None, "id_field": None,
                                   "quoting": quoting})


def answers(run, spec: TaskSpec, examples) -> list[Prediction]:
    """One ``Prediction`` per example, as the task's kind answers it."""
    kind, preds = kind_of(spec), run.predict_examples(spec, examples)
    return [kind.answer(spec, preds, i, e.words) for i, e in enumerate(examples)]


def predict_file(run, task: str, input_path: Path, output: Path, text_fields=None, id_field=None,
                 fmt=None) -> int:
    """One prediction per input record of ``input_path`` (every record is read, or the file is refused
    naming the line at fault); JSONL (.jsonl) or TSV (CoNLL for word-level tasks) output. Returns the count."""
    specs = {s.name: s for s in run.specs()}
    if task not in specs:
        raise UnknownTask(f"unknown task {task!r}: the run has {', '.join(specs)}")
    spec = input_spec(specs[task], Path(input_path), text_fields, id_field, fmt)
    examples = read_split(spec, "input", Path("."))
    text = kind_of(spec).prediction_file(spec, [e.key for e in examples], answers(run, spec, examples),
                                         Path(output).suffix.lower() == ".jsonl")
    atomic_write_text(Path(output), text)
    return len(examples)


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
        kind = kind_of(spec)
        for split, examples in tests.items():
            name = spec.splits[split].submission or (f"{spec.name}.tsv" if split == "test" else f"{spec.name}-{split}.tsv")
            body = ["index\tprediction"] + [f"{e.key}\t{kind.cell(spec, p)}"
                                            for e, p in zip(examples, answers(run, spec, examples))]
            atomic_write_text(out_dir / name, "\n".join(body) + "\n")
            written.append(name)
    return written, notes
