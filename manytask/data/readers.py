"""Read a task's files (TSV, CSV, JSONL) into examples with stable ids.

Every problem is reported as a ``DataError`` naming the file, the line and the field, so a
user can open the file at the place that is wrong.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from manytask.tasks import Field, SplitSpec, TaskSpec

csv.field_size_limit(1 << 24)


class DataError(ValueError):
    """Bad input data; the message names file, line and field."""

    def __init__(self, path: Union[str, Path], message: str, line: Optional[int] = None, field: Optional[Field] = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


@dataclass
class Example:
    """One input. ``id`` survives re-tokenisation and subsampling: teacher targets are keyed by it.

    ``label`` is a class index (classification), a score on the task's own range (regression), one
    tag index per word (tagging), or None for unlabeled test data. A tagging example also keeps its
    ``words`` and their ``tags`` as written (the tag set may only be known once the training file is read).
    """

    id: str
    text_a: str
    text_b: Optional[str]
    label: Optional[Union[int, float, list[int]]]
    key: str  # the file's own index (or line number): GLUE submissions are keyed by it
    words: Optional[list[str]] = None
    tags: Optional[list[str]] = None
    path: str = ""  # where it was read: errors found later (an unknown tag) can still name file and line
    line: int = 0
    word_lines: Optional[list[int]] = None  # the line of each word (CoNLL: one line a word)


def infer_format(path: Path, declared: Optional[str]) -> str:
    if declared:
        return declared
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "csv", "jsonl", "conll"):
        return suffix
    if suffix == "json":
        return "jsonl"
    raise DataError(path, "cannot tell the format from the file name: set 'format: tsv|csv|jsonl|conll' for the task")


Record = tuple[int, Union[dict, list]]  # (line number, fields by name or by position)


def default_quoting(fmt: str) -> bool:
    """CSV honours quotes; TSV does not (GLUE's files hold bare quotes that are text, not delimiters)."""
    return fmt == "csv"


def decode_error(path: Path, encoding: str, err: UnicodeDecodeError) -> DataError:
    """Name the line and the byte offset of the first bytes that ``encoding`` cannot decode."""
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.end].hex(" ")
                return DataError(path, f"not valid {encoding} at byte offset {offset + e.start} (column {e.start + 1}, "
                                       f"bytes {bad}); set 'encoding:' for the task, e.g. latin-1 or cp1252",
                                 line=line_no)
            offset += len(raw)
    return DataError(path, f"not valid {encoding}: {err.reason} at byte offset {err.start}")


def iter_records(path: Path, fmt: str, header: bool, quoting: Optional[bool] = None, encoding: str = "utf-8",
                 multiline: bool = False) -> Iterator[Record]:
    """Yield (line, record): the line a record starts on, and its fields (dicts with a header, else lists).

    With quoting on, a quoted field that runs over several lines is an error naming the line it
    starts on, unless ``multiline`` allows it (one record, however many lines, is one example).
    """
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        yield from _records(path, fmt, header, default_quoting(fmt) if quoting is None else quoting, enc, multiline)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e) from None


def _records(path: Path, fmt: str, header: bool, quoting: bool, encoding: str, multiline: bool) -> Iterator[Record]:
    if fmt == "jsonl":
        with open(path, encoding=encoding) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"not valid JSON ({e.msg} at column {e.colno})", line=line_no) from None
                if not isinstance(obj, dict):
                    raise DataError(path, "each JSONL line must be an object", line=line_no)
                yield line_no, obj
        return
    delimiter = "\t" if fmt == "tsv" else ","
    with open(path, encoding=encoding, newline="") as f:
        if quoting:
            reader = csv.reader(f, delimiter=delimiter, strict=True)
        else:  # GLUE: quotes are text, never field delimiters
            reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        names: Optional[list[str]] = None
        while True:
            line_no = reader.line_num + 1  # the line this record starts on
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(path, f"malformed {fmt.upper()}: {e} (in the record that starts here)",
                                line=line_no) from None
            if reader.line_num > line_no and not multiline:
                raise DataError(path, f"a quoted field runs from line {line_no} to line {reader.line_num}: one record "
                                      "over several lines. If the quote is text, set 'quoting: false' for the task; "
                                      "if records really span lines, set 'multiline: true'", line=line_no)
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header and names is None:
                names = [c.strip() for c in row]
                if len(set(names)) != len(names):
                    raise DataError(path, f"duplicate column names in header: {names}", line=line_no)
                continue
            if names is not None:
                if len(row) != len(names):
                    raise DataError(path, f"expected {len(names)} fields as in the header, found {len(row)}",
                                    line=line_no)
                yield line_no, dict(zip(names, row))
            else:
                yield line_no, row
    if header and names is None:
        raise DataError(path, "the file is empty: expected a header line")


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


def _label(spec: TaskSpec, path: Path, line: int, record, field: Field) -> Union[int, float]:
    raw = _get(path, line, record, field)
    if spec.kind == "classification":
        value = str(raw).strip()
        if isinstance(raw, float) and raw.is_integer():
            value = str(int(raw))
        assert spec.labels is not None
        if value not in spec.labels:
            raise DataError(path, f"label {value!r} is not one of the declared labels {spec.labels}", line=line, field=field)
        return spec.labels.index(value)
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise DataError(path, f"expected a number, found {raw!r}", line=line, field=field) from None
    lo, hi = spec.label_range  # type: ignore[misc]
    if math.isnan(score) or not lo <= score <= hi:
        raise DataError(path, f"score {score} is outside the declared label_range [{lo}, {hi}]", line=line, field=field)
    return score


def read_split(spec: TaskSpec, split_name: str, root: Path) -> list[Example]:
    """Read one split of a task. Raises FileNotFoundError (naming the file) or DataError."""
    split: SplitSpec = spec.splits[split_name]
    path = (root / split.path).resolve() if not Path(split.path).is_absolute() else Path(split.path)
    if not path.is_file():
        raise FileNotFoundError(f"task {spec.name!r}, split {split_name!r}: file not found: {path}")
    fmt = infer_format(path, spec.format)
    text_fields = split.text_fields or spec.text_fields
    label_field = None if split.unlabeled else (split.label_field if split.label_field is not None else spec.label_field)
    if not split.unlabeled and label_field is None:
        raise DataError(path, f"task {spec.name!r} has no label_field for labelled split {split_name!r}")
    id_field = split.id_field if split.id_field is not None else spec.id_field
    if split.header is False and fmt == "jsonl":
        raise DataError(path, "JSONL lines are objects: 'header: false' does not apply")
    if spec.kind == "tagging":
        from manytask.data.tagging import read_tagged

        return read_tagged(spec, split_name, path, fmt, text_fields[0], label_field, id_field)
    if fmt == "conll":
        raise DataError(path, f"task {spec.name!r}: CoNLL files hold token tags: they are for 'kind: tagging' tasks")
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
