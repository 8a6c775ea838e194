"""Read word-level splits: records with a word list and a tag list (``{"tokens": [...], "tags": [...]}`` in
JSONL, Parquet or a ``datasets`` table, whose tag ids become their names) and CoNLL files (one word a line, the tag in a
named or numbered column, a blank line between sentences, ``-DOCSTART-`` lines skipped).

Errors name file, line and field: a malformed line, a word/tag count mismatch, an empty sentence, a tag
outside the declared (or training-file) tag set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from manytask.data.files import DataError, iter_conll
from manytask.kinds import kind_of
from manytask.kinds.base import LabelError
from manytask.records import Example
from manytask.tasks import Field, TaskSpec


def _column(path: Path, line: int, field: Field, columns: Optional[list[str]], width: int) -> int:
    if isinstance(field, int):
        index = field if field >= 0 else width + field
    elif columns is None:
        raise DataError(path, "name the CoNLL columns ('columns: [token, ..., tag]') or give 0-based positions "
                              "(by default the words are the first column and the tags the last)", line=line, field=field)
    elif field not in columns:
        raise DataError(path, f"no column {field!r} (columns: {', '.join(columns)})", line=line, field=field)
    else:
        index = columns.index(field)
    if not 0 <= index < width:
        raise DataError(path, f"the line has {width} columns", line=line, field=field)
    return index


def _words_and_tags(source, at: int, record: dict, text_field: Field, label_field: Optional[Field]):
    words = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise source.error("expected a list of non-empty word strings", at, text_field)
    if not words:
        raise source.error("empty sentence: no words", at, text_field)
    tags = None
    if label_field is not None:
        tags = record.get(label_field)
        if isinstance(tags, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tags):
            tags = [str(t) for t in tags]  # tag ids without names: the task declares them as "0", "1", ...
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise source.error("expected a list of tag strings", at, label_field)
        if len(tags) != len(words):
            raise source.error(f"{len(words)} words but {len(tags)} tags", at, label_field)
    return words, tags


def read_words(spec: TaskSpec, split_name: str, source, text_field: Field,
               label_field: Optional[Field], id_field: Optional[Field]) -> list[Example]:
    examples: list[Example] = []
    seen: dict[str, int] = {}
    fmt, path = source.fmt, source.path
    if fmt in ("jsonl", "parquet", "hf_disk", "hf", "rows"):
        for line, record in source.records():
            words, tags = _words_and_tags(source, line, record, text_field, label_field)
            key = str(record.get(id_field, "")).strip() if id_field is not None else str(line)
            if id_field is not None and not key:
                raise source.error("missing id", line, id_field)
            examples.append(Example("", " ".join(words), None, None, key, words, tags, source.where, line,
                                    [line] * len(words), source.unit))
    elif fmt == "conll":
        if id_field is not None:
            raise DataError(path, "CoNLL sentences are named by their first line: 'id_field' does not apply")
        words_field, tags_field = kind_of(spec).default_fields
        if spec.columns is None:  # the CoNLL convention: the words in the first column, the tags in the last
            text_field = 0 if text_field == (words_field or [None])[0] else text_field
            label_field = -1 if label_field is not None and label_field == tags_field else label_field
        for start, rows in iter_conll(path, spec.encoding):
            ti = _column(path, start, text_field, spec.columns, len(rows[0]))
            li = None if label_field is None else _column(path, start, label_field, spec.columns, len(rows[0]))
            words = [r[ti] for r in rows]
            tags = None if li is None else [r[li] for r in rows]
            examples.append(Example("", " ".join(words), None, None, str(start), words, tags, str(path), start,
                                    list(range(start, start + len(rows)))))
    else:
        raise source.error(f"a {spec.kind} task reads word lists (JSONL, Parquet, datasets) or CoNLL files, "
                           f"not {fmt.upper()}")
    for e in examples:
        if e.key in seen:
            raise source.error(f"id {e.key!r} already used on {source.unit} {seen[e.key]}", e.line, id_field)
        seen[e.key] = e.line
        e.id = f"{spec.name}/{split_name}/{e.key}"
    if not examples:
        raise source.error("no sentences")
    if spec.labels is not None:
        assign_tags(spec, examples, label_field)
    return examples


def assign_tags(spec: TaskSpec, examples: Sequence[Example], label_field: Optional[Field] = None) -> None:
    """Tag strings -> what the task's kind keeps; a tag outside the tag set names its file, line and field."""
    field = label_field if label_field is not None else spec.label_field
    kind = kind_of(spec)
    for e in examples:
        if e.tags is None:
            continue
        try:
            e.label = kind.parse_label(spec, e.tags)
        except LabelError as err:
            at = getattr(err, "position", None)
            line = e.word_lines[at] if e.word_lines and at is not None else e.line
            raise DataError(e.path, str(err), line=line, field=field, unit=e.unit) from None
