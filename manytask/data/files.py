"""Text file formats a task reads: TSV, CSV and JSONL records, CoNLL sentences (``sources`` picks the reader); and ``DataError``, which names the
file, the line and the field, so a user can open the file at the place that is wrong.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, Optional, Union

from manytask.errors import ManytaskError
from manytask.tasks import Field

csv.field_size_limit(1 << 24)


class DataError(ManytaskError, ValueError):
    """Bad input data; the message names file, line and field."""

    def __init__(self, path: Union[str, Path], message: str, line: Optional[int] = None, field: Optional[Field] = None,
                 unit: str = "line"):
        where = str(path)
        if line is not None:
            where += f", {unit} {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field, self.unit = str(path), line, field, unit


Record = tuple[int, Union[dict, list]]  # (line or row, fields by name or by position)


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
