"""Read a task's split into examples with stable ids: sentence-level records here, word-level files through
``words``; every label is read and checked by the task's kind. Errors name file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from manytask.data.files import DataError, infer_format, iter_records  # noqa: F401 (DataError: readers raise it)
from manytask.data.words import read_words
from manytask.errors import NotFound
from manytask.kinds import kind_of
from manytask.kinds.base import LabelError
from manytask.records import Example
from manytask.tasks import Field, SplitSpec, TaskSpec


def _get(path: Path, line: int, record: Union[dict, list], field: Field):
    if isinstance(record, dict):
        if isinstance(field, int):
            raise DataError(path, "this file has a header: name columns, not positions", line=line, field=field)
        if field not in record:
            raise DataError(path, f"missing column (the line has: {', '.join(map(str, record))})", line=line, field=field)
        return record[field]
    if not isinstance(field, int):
        raise DataError(path, "this file has no header: give the column's 0-based position", line=line, field=field)
    if field >= len(record):
        raise DataError(path, f"missing column: the line has only {len(record)} fields", line=line, field=field)
    return record[field]


def _text(path: Path, line: int, record, field: Field) -> str:
    value = _get(path, line, record, field)
    if value is None or not isinstance(value, (str, int, float)):
        raise DataError(path, f"expected text, found {type(value).__name__}", line=line, field=field)
    text = str(value).strip()
    if not text:
        raise DataError(path, "empty text", line=line, field=field)
    return text


def _label(spec: TaskSpec, path: Path, line: int, record, field: Field):
    raw = _get(path, line, record, field)
    try:
        return kind_of(spec).parse_label(spec, raw)
    except LabelError as e:
        raise DataError(path, str(e), line=line, field=field) from None


def read_split(spec: TaskSpec, split_name: str, root: Path) -> list[Example]:
    """Read one split of a task. Raises FileNotFoundError (naming the file) or DataError."""
    split: SplitSpec = spec.splits[split_name]
    path = (root / split.path).resolve() if not Path(split.path).is_absolute() else Path(split.path)
    if not path.is_file():
        raise NotFound(f"task {spec.name!r}, split {split_name!r}: file not found: {path}")
    fmt = infer_format(path, spec.format)
    text_fields = split.text_fields or spec.text_fields
    label_field = None if split.unlabeled else (split.label_field if split.label_field is not None else spec.label_field)
    if not split.unlabeled and label_field is None:
        raise DataError(path, f"task {spec.name!r} has no label_field for labelled split {split_name!r}")
    id_field = split.id_field if split.id_field is not None else spec.id_field
    if split.header is False and fmt == "jsonl":
        raise DataError(path, "JSONL lines are objects: 'header: false' does not apply")
    if kind_of(spec).word_level:
        return read_words(spec, split_name, path, fmt, text_fields[0], label_field, id_field)
    if fmt == "conll":
        raise DataError(path, f"task {spec.name!r}: CoNLL files hold a label per word: they are for word-level "
                              "tasks ('kind: tagging')")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    records = iter_records(path, fmt, header=split.header and fmt != "jsonl", quoting=spec.quoting,
                           encoding=spec.encoding, multiline=spec.multiline)
    for line, record in records:
        texts = [_text(path, line, record, f) for f in text_fields]
        label = None if label_field is None else _label(spec, path, line, record, label_field)
        key = str(_get(path, line, record, id_field)).strip() if id_field is not None else str(line)
        if key in seen:
            raise DataError(path, f"id {key!r} already used on line {seen[key]}", line=line, field=id_field)
        seen[key] = line
        examples.append(
            Example(
                id=f"{spec.name}/{split_name}/{key}",
                text_a=texts[0],
                text_b=texts[1] if len(texts) > 1 else None,
                label=label,
                key=key,
            )
        )
    if not examples:
        raise DataError(path, "no examples in file")
    return examples
