"""Task specifications: what a task reads, predicts and is scored by.

Tasks are data: GLUE's nine tasks (and AX, scored with the MNLI model) are declared
below as ``TaskSpec`` values, and a user task is the same structure written in YAML.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from manytask.kinds import get_kind, kind_names

Field = Union[str, int]  # a column name, or a 0-based column index for header-less files
# how a split's file is read (``data/sources``): text files, Parquet, a saved ``datasets`` directory, rows
# given in memory and saved by the Python API
Format = Literal["tsv", "csv", "jsonl", "conll", "parquet", "hf_disk", "rows"]


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class SplitSpec(StrictModel):
    """One split of a task: a file or saved dataset (``path``), or a hub dataset (``source: hf``). Fields left
    unset fall back to the task's."""

    path: Optional[str] = None
    role: Literal["train", "dev", "test"]
    format: Optional[Format] = None  # default: the task's, else by the file's name
    source: Literal["file", "hf"] = "file"  # hf: datasets.load_dataset(dataset, config, split=split)
    dataset: Optional[str] = None  # source hf: the hub name, e.g. "glue" or "nyu-mll/glue"
    config: Optional[str] = None  # source hf: the dataset's configuration (subset), e.g. "sst2"
    split: Optional[str] = None  # hf and hf_disk: the split's name (default: the role's; dev -> validation)
    header: bool = True
    text_fields: Optional[list[Field]] = None
    label_field: Optional[Field] = None
    id_field: Optional[Field] = None
    unlabeled: bool = False  # test files: no label column
    submission: Optional[str] = None  # GLUE leaderboard file name, e.g. "MNLI-m.tsv"
    display: Optional[str] = None  # column name in tables, e.g. "MNLI-m"

    @model_validator(mode="after")
    def _located(self) -> "SplitSpec":
        if self.source == "hf":
            if not self.dataset:
                raise ValueError("a 'source: hf' split names its 'dataset' (and 'config', 'split')")
            if self.path is not None:
                raise ValueError("a 'source: hf' split is named by 'dataset', not 'path'")
        elif not self.path:
            raise ValueError("give the split's 'path' (or 'source: hf' with 'dataset')")
        elif self.dataset or self.config:
            raise ValueError("'dataset' and 'config' name a hub dataset: set 'source: hf'")
        return self

    @property
    def local(self) -> bool:
        """Read from this machine (a file or a saved directory), not fetched from the hub."""
        return self.source == "file"


class TaskSpec(StrictModel):
    """A task: its files, columns, label space and metrics. What its ``kind`` means is the kind's (``kinds/``)."""

    name: str
    display: Optional[str] = None
    kind: str  # a registered task kind: classification, regression, tagging, ...
    text_fields: list[Field]  # tagging: the one field (JSONL) or column (CoNLL) holding the words
    label_field: Optional[Field] = None
    id_field: Optional[Field] = None
    labels: Optional[list[str]] = None
    label_range: Optional[tuple[float, float]] = None
    metrics: list[str] = []  # default: the kind's (tagging: by tag set, once it is known)
    primary_metric: Optional[str] = None
    splits: dict[str, SplitSpec]
    format: Optional[Format] = None
    columns: Optional[list[str]] = None  # CoNLL: names of the columns, so fields can be named
    quoting: Optional[bool] = None  # None: by format (CSV honours quotes, TSV does not)
    multiline: bool = False  # with quoting: may a quoted field run over several lines?
    encoding: str = "utf-8"
    root: Optional[str] = None  # directory that split paths are relative to
    glue: bool = False  # GLUE task: root is resolved against the GLUE directory
    in_average: bool = True  # WNLI is left out of the GLUE average, as BAM does

    @field_validator("text_fields")
    @classmethod
    def _one_or_two_texts(cls, v: list[Field]) -> list[Field]:
        if not 1 <= len(v) <= 2:
            raise ValueError("text_fields must name one column (single sentence) or two (pair)")
        return v

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in kind_names():
            raise ValueError(f"unknown task kind {v!r} (known: {', '.join(kind_names())})")
        return v

    @model_validator(mode="after")
    def _check_kind(self) -> "TaskSpec":
        kind = get_kind(self.kind)
        if not self.metrics:
            self.metrics = kind.default_metrics(self)
        kind.validate(self)
        if not self.metrics and not (kind.word_level and self.labels is None):
            raise ValueError(f"task {self.name!r}: name one or more metrics")
        if self.primary_metric and self.primary_metric not in self.metrics:
            self.metrics = [*self.metrics, self.primary_metric]
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"task {self.name!r}: unknown encoding {self.encoding!r}") from None
        return self

    @property
    def title(self) -> str:
        return self.display or self.name

    @property
    def primary(self) -> str:
        return self.primary_metric or self.metrics[0]

    @property
    def num_outputs(self) -> int:
        return get_kind(self.kind).num_outputs(self)

    @property
    def pair(self) -> bool:
        """Does the task read a text pair (two fields)? Tagging and single-sentence tasks read one."""
        return len(self.text_fields) == 2

    def split_root(self, glue_dir: Optional[Path]) -> Path:
        if self.glue:
            if glue_dir is None:
                raise ValueError("a GLUE task needs the GLUE directory")
            return Path(glue_dir) / (self.root or "")
        return Path(self.root or ".")


def _tsv(path, role, **kw) -> SplitSpec:
    return SplitSpec(path=path, role=role, **kw)


def _glue_test(path: str, submission: str, texts: list[Field]) -> SplitSpec:
    return SplitSpec(path=path, role="test", unlabeled=True, id_field="index", text_fields=texts, submission=submission)


BINARY = ["0", "1"]
NLI2 = ["entailment", "not_entailment"]

GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="cola", display="CoLA", kind="classification", root="CoLA", glue=True, quoting=False,
            text_fields=[3], label_field=1, labels=BINARY, metrics=["matthews", "accuracy"],
            splits={
                "train": _tsv("train.tsv", "train", header=False),
                "dev": _tsv("dev.tsv", "dev", header=False),
                "test": _glue_test("test.tsv", "CoLA.tsv", ["sentence"]),
            },
        ),
        TaskSpec(
            name="sst2", display="SST-2", kind="classification", root="SST-2", glue=True, quoting=False,
            text_fields=["sentence"], label_field="label", labels=BINARY, metrics=["accuracy"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "SST-2.tsv", ["sentence"]),
            },
        ),
        TaskSpec(
            name="mrpc", display="MRPC", kind="classification", root="MRPC", glue=True, quoting=False,
            text_fields=["#1 String", "#2 String"], label_field="Quality", labels=BINARY,
            metrics=["accuracy", "f1"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "MRPC.tsv", ["#1 String", "#2 String"]),
            },
        ),
        TaskSpec(
            name="stsb", display="STS-B", kind="regression", root="STS-B", glue=True, quoting=False,
            text_fields=["sentence1", "sentence2"], label_field="score", id_field="index", label_range=(0.0, 5.0),
            metrics=["pearson", "spearman"], primary_metric="spearman",
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "STS-B.tsv", ["sentence1", "sentence2"]),
            },
        ),
        TaskSpec(
            name="qqp", display="QQP", kind="classification", root="QQP", glue=True, quoting=False,
            text_fields=["question1", "question2"], label_field="is_duplicate", id_field="id", labels=BINARY,
            metrics=["accuracy", "f1"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "QQP.tsv", ["question1", "question2"]),
            },
        ),
        TaskSpec(
            name="mnli", display="MNLI", kind="classification", root="MNLI", glue=True, quoting=False,
            text_fields=["sentence1", "sentence2"], label_field="gold_label", id_field="index",
            labels=["contradiction", "entailment", "neutral"], metrics=["accuracy"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev_matched": _tsv("dev_matched.tsv", "dev", display="MNLI-m"),
                "dev_mismatched": _tsv("dev_mismatched.tsv", "dev", display="MNLI-mm"),
                "test_matched": _glue_test("test_matched.tsv", "MNLI-m.tsv", ["sentence1", "sentence2"]),
                "test_mismatched": _glue_test("test_mismatched.tsv", "MNLI-mm.tsv", ["sentence1", "sentence2"]),
                "diagnostic": _glue_test("../diagnostic/diagnostic.tsv", "AX.tsv", ["sentence1", "sentence2"]),
            },
        ),
        TaskSpec(
            name="qnli", display="QNLI", kind="classification", root="QNLI", glue=True, quoting=False,
            text_fields=["question", "sentence"], label_field="label", id_field="index", labels=NLI2,
            metrics=["accuracy"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "QNLI.tsv", ["question", "sentence"]),
            },
        ),
        TaskSpec(
            name="rte", display="RTE", kind="classification", root="RTE", glue=True, quoting=False,
            text_fields=["sentence1", "sentence2"], label_field="label", id_field="index", labels=NLI2,
            metrics=["accuracy"],
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "RTE.tsv", ["sentence1", "sentence2"]),
            },
        ),
        TaskSpec(
            name="wnli", display="WNLI", kind="classification", root="WNLI", glue=True, quoting=False,
            text_fields=["sentence1", "sentence2"], label_field="label", id_field="index", labels=BINARY,
            metrics=["accuracy"], in_average=False,
            splits={
                "train": _tsv("train.tsv", "train"),
                "dev": _tsv("dev.tsv", "dev"),
                "test": _glue_test("test.tsv", "WNLI.tsv", ["sentence1", "sentence2"]),
            },
        ),
    ]
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def glue_task(name: str) -> Optional[TaskSpec]:
    """The GLUE spec for a name in any common spelling (SST-2, sst2, STS-B...), or None."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    spec = GLUE_TASKS.get(key)
    return spec.model_copy(deep=True) if spec else None
