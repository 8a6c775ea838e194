"""Where a split's rows come from, as a registry of readers: text files by format (TSV, CSV, JSONL; CoNLL is
read word by word in ``words``), Parquet files, a directory saved by ``datasets``' ``save_to_disk``, a dataset
on the Hugging Face hub, and rows handed over in memory (saved as ``rows`` JSONL by the Python API).

Every source yields ``(position, record)`` pairs that ``readers`` turns into examples, so ids, label checks and
errors (naming the source, the line or row, and the field) are the same whatever the rows came from. A text
file counts lines from 1; a table counts rows from 0, as pandas and ``datasets`` index them, and a row's
index is its id when the task names no ``id_field``. ``pyarrow`` and ``datasets`` are optional (``.[data]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

from manytask.data.files import DataError, Record, iter_records
from manytask.errors import ManytaskError
from manytask.io import file_sha256
from manytask.tasks import SplitSpec, TaskSpec

INSTALL = "pip install -e '.[data]'"
TEXT_FORMATS = ("tsv", "csv", "jsonl", "conll")
TABLE_FORMATS = ("parquet", "hf_disk", "rows")


class HubUnreachable(ManytaskError, ConnectionError):
    """A ``source: hf`` split while the Hugging Face hub cannot be reached (and no cached copy is used)."""


@dataclass
class Source:
    """One split's rows: ``where`` names it in errors, ``unit`` is what a position counts (line or row)."""

    where: str
    fmt: str
    unit: str
    exists: Callable[[], bool]
    records: Callable[[], Iterator[Record]]
    fingerprint: Callable[[], str]
    path: Optional[Path] = None  # the file or directory, for sources that have one

    def error(self, message: str, at: Optional[int] = None, field=None) -> DataError:
        return DataError(self.where, message, line=at, field=field, unit=self.unit)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ManytaskError(f"reading this data source needs {module}: install it with {INSTALL}") from None


def infer_format(path: Path, declared: Optional[str]) -> str:
    """The declared format, else the one the name shows (a saved ``datasets`` directory by its files)."""
    if declared:
        return declared
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "hf_disk"
    name = path.name.lower()
    if name.endswith(".rows.jsonl"):
        return "rows"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "csv", "jsonl", "conll", "parquet"):
        return suffix
    if suffix == "json":
        return "jsonl"
    if path.is_dir():
        raise DataError(path, "a directory, but not one saved by datasets' save_to_disk (no dataset_info.json, "
                              "state.json or dataset_dict.json): give a file, or 'format: hf_disk' for a saved dataset")
    raise DataError(path, "cannot tell the format from the file name: set 'format: tsv|csv|jsonl|conll|parquet|hf_disk' "
                          "for the task")


def split_path(spec: TaskSpec, split: SplitSpec, root: Path) -> Path:
    path = Path(split.path or "")
    return path if path.is_absolute() else (root / path).resolve()


def open_source(spec: TaskSpec, split_name: str, root: Path) -> Source:
    """The reader for one split of a task, chosen by its ``source`` and format."""
    split = spec.splits[split_name]
    if split.source == "hf":
        return _hub(spec, split_name, split)
    path = split_path(spec, split, root)
    if not path.exists():
        return Source(str(path), split.format or spec.format or "file", "line", lambda: False, _absent(path),
                      lambda: "", path)
    fmt = infer_format(path, split.format or spec.format)
    return READERS[fmt](spec, split_name, split, path, fmt)


def _absent(path: Path):
    def records():
        raise DataError(path, "file not found")
    return records


# --- text files --------------------------------------------------------------------------------------------

def _text_file(spec: TaskSpec, split_name: str, split: SplitSpec, path: Path, fmt: str) -> Source:
    if not path.is_file():
        raise DataError(path, f"a directory: a {fmt.upper()} split is one file")
    if split.header is False and fmt == "jsonl":
        raise DataError(path, "JSONL lines are objects: 'header: false' does not apply")

    def records() -> Iterator[Record]:
        return iter_records(path, fmt, header=split.header and fmt != "jsonl", quoting=spec.quoting,
                            encoding=spec.encoding, multiline=spec.multiline)
    return Source(str(path), fmt, "line", path.is_file, records, lambda: file_sha256(path)[:16], path)


def _rows_file(spec: TaskSpec, split_name: str, split: SplitSpec, path: Path, fmt: str) -> Source:
    """Rows given in memory (a DataFrame, a list of dicts), saved one JSON object a line: row = line - 1."""
    def records() -> Iterator[Record]:
        for line, record in iter_records(path, "jsonl", header=False, encoding="utf-8"):
            yield line - 1, record
    return Source(f"rows given for task {spec.name!r} ({split.role}, saved as {path})", fmt, "row", path.is_file,
                  records, lambda: file_sha256(path)[:16], path)


# --- tables --------------------------------------------------------------------------------------------------

def _parquet(spec: TaskSpec, split_name: str, split: SplitSpec, path: Path, fmt: str) -> Source:
    def records() -> Iterator[Record]:
        _require("pyarrow")
        import pyarrow.parquet as pq
        try:
            table = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid and OSError subclasses for damaged files
            raise DataError(path, f"not a readable Parquet file ({e})") from None
        row = 0
        for batch in table.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    return Source(str(path), fmt, "row", path.is_file, records, lambda: file_sha256(path)[:16], path)


def _class_names(feature) -> Optional[list[str]]:
    """A ``ClassLabel``'s names, also inside a sequence (tag ids of a tagging dataset)."""
    names = getattr(feature, "names", None)
    if names is None and hasattr(feature, "feature"):
        names = getattr(feature.feature, "names", None)
    return list(names) if names else None


def _dataset_records(spec: TaskSpec, dataset, where: str) -> Iterator[Record]:
    """A ``datasets.Dataset``'s rows; class ids become class names where the task's labels are the names
    (a task that declares labels "0", "1" keeps the ids)."""
    mapping: dict[str, list[str]] = {}
    for column, feature in dataset.features.items():
        names = _class_names(feature)
        keeps_ids = spec.labels is not None and all(str(i) in spec.labels for i in range(len(names or [])))
        if names and not keeps_ids:
            mapping[column] = names

    def name(names: list[str], value):
        return names[value] if isinstance(value, int) and 0 <= value < len(names) else value
    for row, record in enumerate(dataset):
        for column, names in mapping.items():
            value = record.get(column)
            record[column] = [name(names, v) for v in value] if isinstance(value, list) else name(names, value)
        yield row, record


def _hf_disk(spec: TaskSpec, split_name: str, split: SplitSpec, path: Path, fmt: str) -> Source:
    state: dict = {}

    def load():
        if "dataset" not in state:
            datasets = _require("datasets")
            try:
                loaded = datasets.load_from_disk(str(path))
            except FileNotFoundError as e:
                raise DataError(path, f"not a directory saved by datasets' save_to_disk ({e})") from None
            if isinstance(loaded, datasets.DatasetDict):
                wanted = split.split or _default_split(split.role, list(loaded))
                if wanted not in loaded:
                    raise DataError(path, f"no split {wanted!r} in the saved dataset (it has: {', '.join(loaded)}); "
                                          "name one with 'split:'")
                loaded = loaded[wanted]
            elif split.split:
                raise DataError(path, f"'split: {split.split}' given, but the directory holds one dataset, not a "
                                      "DatasetDict")
            state["dataset"] = loaded
        return state["dataset"]

    where = f"{path}" + (f" (split {split.split})" if split.split else "")
    return Source(where, fmt, "row", path.is_dir, lambda: _dataset_records(spec, load(), where),
                  lambda: str(load()._fingerprint)[:16], path)


def _default_split(role: str, available: list[str]) -> str:
    """A DatasetDict's split for a role: its own name, else the usual hub names (dev = validation)."""
    for name in {"train": ["train"], "dev": ["dev", "validation", "valid"], "test": ["test"]}[role]:
        if name in available:
            return name
    return role


# --- the Hugging Face hub ------------------------------------------------------------------------------------

def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a connection to the hub's endpoint be opened? (``datasets`` itself retries for half a minute.)"""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub(spec: TaskSpec, split_name: str, split: SplitSpec) -> Source:
    name = split.dataset or ""
    wanted = split.split or {"dev": "validation"}.get(split.role, split.role)
    where = f"hf:{name}" + (f"/{split.config}" if split.config else "") + f" (split {wanted})"
    state: dict = {}

    def load():
        if "dataset" not in state:
            datasets = _require("datasets")
            local = ("or save it where the hub is reachable (datasets.load_dataset(...).save_to_disk(DIR)) and give "
                     "'path: DIR' (format hf_disk), or export it to Parquet")
            if not _offline() and not hub_reachable():
                raise HubUnreachable(f"{where}: the Hugging Face hub cannot be reached from this machine: set "
                                     f"HF_HUB_OFFLINE=1 to use a copy in the datasets cache, {local}")
            try:
                state["dataset"] = datasets.load_dataset(name, split.config, split=wanted)
            except (ConnectionError, FileNotFoundError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                hint = f"no cached copy with HF_HUB_OFFLINE set: {local}" if _offline() else local
                raise HubUnreachable(f"{where}: cannot load it ({first}); {hint}") from None
        return state["dataset"]

    return Source(where, "hf", "row", lambda: True, lambda: _dataset_records(spec, load(), where),
                  lambda: str(load()._fingerprint)[:16])


READERS: dict[str, Callable[..., Source]] = {
    "tsv": _text_file, "csv": _text_file, "jsonl": _text_file, "conll": _text_file,
    "parquet": _parquet, "hf_disk": _hf_disk, "rows": _rows_file,
}


# --- rows handed over in memory (the Python API) ---------------------------------------------------------------

def is_table(value) -> bool:
    """A pandas DataFrame, or a list of dicts: data the Python API takes wherever it takes a file."""
    if type(value).__name__ == "DataFrame" and hasattr(value, "to_json"):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(r, dict) for r in value)


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays (a row's token list)
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def table_lines(value, what: str) -> str:
    """One JSON object a line, in row order (NaN and None as null)."""
    if type(value).__name__ == "DataFrame":
        return value.to_json(orient="records", lines=True, force_ascii=False)
    lines = []
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(what, f"expected a dict, found {type(row).__name__}", line=i, unit="row")
        try:
            lines.append(json.dumps(row, ensure_ascii=False, default=_json_default))
        except (TypeError, ValueError) as e:
            raise DataError(what, f"cannot be saved as JSON ({e})", line=i, unit="row") from None
    return "\n".join(lines) + "\n"


def save_table(value, directory: Path, stem: str, what: str) -> Path:
    """Save rows given in memory under ``directory`` (by content, so the same rows are one file) and return
    the path a task entry can name: a run that read them can be resumed and re-read later."""
    from manytask.io import atomic_write_text
    text = table_lines(value, what)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(directory) / f"{stem}-{digest}.rows.jsonl"
    if not path.is_file():
        atomic_write_text(path, text)
    return path
