"""Read a task's split into examples with stable ids: sentence-level records here, word-level ones through
``words``; every label is read and checked by the task's kind. The rows come from any source (``sources``);
errors name the source, the line or row, and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from manytask.data.files import DataError  # noqa: F401 (readers raise it)
from manytask.data.sources import Source, infer_format, open_source  # noqa: F401 (infer_format: re-exported)
from manytask.data.words import read_words
from manytask.errors import NotFound
from manytask.kinds import kind_of
from manytask.kinds.base import LabelError
from manytask.records import Example
from manytask.tasks import Field, SplitSpec, TaskSpec


def _get(source: Source, at: int, record: Union[dict, list], field: Field):
    if isinstance(record, dict):
        if isinstance(field, int):
            raise source.error("the rows have named columns: name columns, not positions", at, field)
        if field not in record:
            raise source.error(f"missing column (the {source.unit} has: {', '.join(map(str, record))})", at, field)
        return record[field]
    if not isinstance(field, int):
        raise source.error("this file has no header: give the column's 0-based position", at, field)
    if field >= len(record):
        raise source.error(f"missing column: the line has only {len(record)} fields", at, field)
    return record[field]


def _text(source: Source, at: int, record, field: Field) -> str:
    value = _get(source, at, record, field)
    if value is None or not isinstance(value, (str, int, float)):
        raise source.error(f"expected text, found {'nothing' if value is None else type(value).__name__}", at, field)
    text = str(value).strip()
    if not text:
        raise source.error("empty text", at, field)
    return text


def _label(spec: TaskSpec, source: Source, at: int, record, field: Field):
    raw = _get(source, at, record, field)
    if raw is None:
        raise source.error("missing label", at, field)
    try:
        return kind_of(spec).parse_label(spec, raw)
    except LabelError as e:
        raise source.error(str(e), at, field) from None


def read_split(spec: TaskSpec, split_name: str, root: Path, fingerprints: Optional[dict[str, str]] = None) -> list[Example]:
    """Read one split of a task (and note the source's fingerprint in ``fingerprints``, keyed by where it is).
    Raises NotFound (naming the file) or DataError."""
    split: SplitSpec = spec.splits[split_name]
    source = open_source(spec, split_name, root)
    if not source.exists():
        raise NotFound(f"task {spec.name!r}, split {split_name!r}: file not found: {source.where}")
    text_fields = split.text_fields or spec.text_fields
    label_field = None if split.unlabeled else (split.label_field if split.label_field is not None else spec.label_field)
    if not split.unlabeled and label_field is None:
        raise source.error(f"task {spec.name!r} has no label_field for labelled split {split_name!r}")
    id_field = split.id_field if split.id_field is not None else spec.id_field
    if fingerprints is not None:
        fingerprints[source.where] = source.fingerprint()
    if kind_of(spec).word_level:
        return read_words(spec, split_name, source, text_fields[0], label_field, id_field)
    if source.fmt == "conll":
        raise source.error(f"task {spec.name!r}: CoNLL files hold a label per word: they are for word-level "
                           "tasks ('kind: tagging')")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for at, record in source.records():
        texts = [_text(source, at, record, f) for f in text_fields]
        label = None if label_field is None else _label(spec, source, at, record, label_field)
        key = str(_get(source, at, record, id_field)).strip() if id_field is not None else str(at)
        if key in seen:
            raise source.error(f"id {key!r} already used on {source.unit} {seen[key]}", at, id_field)
        seen[key] = at
        examples.append(Example(id=f"{spec.name}/{split_name}/{key}", text_a=texts[0],
                                text_b=texts[1] if len(texts) > 1 else None, label=label, key=key))
    if not examples:
        raise source.error("no examples in file" if source.unit == "line" else "no rows")
    return examples
