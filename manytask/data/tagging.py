"""Read token-tagging files: JSONL (``{"tokens": [...], "tags": [...]}``) and CoNLL (one token a line, the
tag in a named or numbered column, a blank line between sentences, ``-DOCSTART-`` lines skipped).

Errors name file, line and field: a malformed line, a token/tag count mismatch, an empty sentence, a tag
outside the declared (or training-file) tag set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

from manytask.data.readers import DataError, Example, decode_error, iter_records
from manytask.tasks import Field, TaskSpec


def iter_conll(path: Path, encoding: str) -> Iterator[tuple[int, list[list[str]]]]:
    """(first line, rows) per sentence; a row is a line's columns (split on tabs, else on whitespace)."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    rows: list[list[str]] = []
    start = 0
    width: Optional[int] = None
    try:
        with open(path, encoding=enc) as f:
            for line_no, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    if rows:
                        yield start, rows
                    rows = []
                    continue
                cols = text.split("\t") if "\t" in text else text.split()
                if cols[0] == "-DOCSTART-":
                    continue
                if width is None:
                    width = len(cols)
                elif len(cols) != width:
                    raise DataError(path, f"expected {width} columns as on the first token line, found {len(cols)}",
                                    line=line_no)
                if not rows:
                    start = line_no
                rows.append(cols)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e) from None
    if rows:
        yield start, rows


def _column(path: Path, line: int, field: Field, columns: Optional[list[str]], width: int) -> int:
    if isinstance(field, int):
        index = field if field >= 0 else width + field
    elif columns is None:
        raise DataError(path, "name the CoNLL columns ('columns: [token, ..., tag]') or give 0-based positions",
                        line=line, field=field)
    elif field not in columns:
        raise DataError(path, f"no column {field!r} (columns: {', '.join(columns)})", line=line, field=field)
    else:
        index = columns.index(field)
    if not 0 <= index < width:
        raise DataError(path, f"the line has {width} columns", line=line, field=field)
    return index


def _words_and_tags(path: Path, line: int, record: dict, text_field: Field, label_field: Optional[Field]):
    words = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise DataError(path, "expected a list of non-empty word strings", line=line, field=text_field)
    if not words:
        raise DataError(path, "empty sentence: no words", line=line, field=text_field)
    tags = None
    if label_field is not None:
        tags = record.get(label_field)
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise DataError(path, "expected a list of tag strings", line=line, field=label_field)
        if len(tags) != len(words):
            raise DataError(path, f"{len(words)} words but {len(tags)} tags", line=line, field=label_field)
    return words, tags


def read_tagged(spec: TaskSpec, split_name: str, path: Path, fmt: str, text_field: Field,
                label_field: Optional[Field], id_field: Optional[Field]) -> list[Example]:
    examples: list[Example] = []
    seen: dict[str, int] = {}
    if fmt == "jsonl":
        for line, record in iter_records(path, "jsonl", header=False, encoding=spec.encoding):
            words, tags = _words_and_tags(path, line, record, text_field, label_field)
            key = str(record.get(id_field, "")).strip() if id_field is not None else str(line)
            if id_field is not None and not key:
                raise DataError(path, "missing id", line=line, field=id_field)
            examples.append(Example("", " ".join(words), None, None, key, words, tags, str(path), line,
                                    [line] * len(words)))
    elif fmt == "conll":
        if id_field is not None:
            raise DataError(path, "CoNLL sentences are named by their first line: 'id_field' does not apply")
        for start, rows in iter_conll(path, spec.encoding):
            ti = _column(path, start, text_field, spec.columns, len(rows[0]))
            li = None if label_field is None else _column(path, start, label_field, spec.columns, len(rows[0]))
            words = [r[ti] for r in rows]
            tags = None if li is None else [r[li] for r in rows]
            examples.append(Example("", " ".join(words), None, None, str(start), words, tags, str(path), start,
                                    list(range(start, start + len(rows)))))
    else:
        raise DataError(path, f"a tagging task reads JSONL or CoNLL files, not {fmt.upper()}")
    for e in examples:
        if e.key in seen:
            raise DataError(path, f"id {e.key!r} already used on line {seen[e.key]}", line=e.line, field=id_field)
        seen[e.key] = e.line
        e.id = f"{spec.name}/{split_name}/{e.key}"
    if not examples:
        raise DataError(path, "no sentences in file")
    if spec.labels is not None:
        assign_tags(spec, examples, label_field)
    return examples


def infer_tag_set(examples: Sequence[Example]) -> list[str]:
    """The tags of the training examples: ``O`` first (where present), then sorted."""
    found = {t for e in examples for t in (e.tags or [])}
    return (["O"] if "O" in found else []) + sorted(found - {"O"})


def assign_tags(spec: TaskSpec, examples: Sequence[Example], label_field: Optional[Field] = None) -> None:
    """Tag strings -> indices of the tag set; a tag outside it names its file, line and field."""
    index = {t: i for i, t in enumerate(spec.labels or [])}
    field = label_field if label_field is not None else spec.label_field
    for e in examples:
        if e.tags is None:
            continue
        labels = []
        for i, t in enumerate(e.tags):
            if t not in index:
                line = e.word_lines[i] if e.word_lines else e.line
                raise DataError(e.path, f"tag {t!r} is not in the task's tag set {spec.labels}", line=line, field=field)
            labels.append(index[t])
        e.label = labels
