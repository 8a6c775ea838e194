"""The records that move between reading, training, scoring and answering: an example, its features, the
predictions on a split, and one answer. Plain dataclasses, so every layer can use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

IGNORE = -100  # token label the loss skips: later pieces of a word, special tokens, padding


@dataclass
class Example:
    """One input. ``id`` survives re-tokenisation and subsampling: teacher targets are keyed by it.

    ``label`` is what the task's kind read from the file (a class index, a score on the task's own range, one
    tag index per word, ...), or None for unlabeled test data. A word-level example also keeps its ``words``
    and their ``tags`` as written (the tag set may only be known once the training file is read).
    """

    id: str
    text_a: str
    text_b: Optional[str]
    label: Optional[Any]
    key: str  # the file's own index (or line number): GLUE submissions are keyed by it
    words: Optional[list[str]] = None
    tags: Optional[list[str]] = None
    path: str = ""  # where it was read: errors found later (an unknown tag) can still name file and line
    line: int = 0
    word_lines: Optional[list[int]] = None  # the line of each word (CoNLL: one line a word)
    unit: str = "line"  # what ``line`` counts: a text file's lines, or a table's rows (from 0)


@dataclass
class Features:
    """Token ids of one task split, aligned with its examples (same order, same ids).

    ``labels`` are the training targets the task's kind made (a class index, a score scaled to [0, 1], one
    label per token, ...). Word-level tasks also keep, per example, the position of each word's first piece
    (-1 for a word the model never sees: cut off by the length limit, or without any piece) and the gold tag
    per word. ``aux`` holds token labels of auxiliary label sets, ``slices`` the membership of each slice.
    """

    ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: Optional[list]
    first_piece: Optional[list[list[int]]] = None
    word_labels: Optional[list[list[int]]] = None
    aux: dict[str, list[list[int]]] = field(default_factory=dict)
    slices: dict[str, list[bool]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    @property
    def unseen_words(self) -> int:
        """Words with no piece in the model's input (scored as wrong)."""
        return sum(p < 0 for row in (self.first_piece or []) for p in row)

    def subset(self, keep: list[int]) -> "Features":
        """The rows ``keep``, every per-example field with them (a slice's members, say)."""
        def pick(xs):
            return None if xs is None else [xs[i] for i in keep]

        return Features([self.ids[i] for i in keep], pick(self.input_ids), pick(self.token_type_ids),
                        pick(self.labels), pick(self.first_piece), pick(self.word_labels),
                        {k: pick(v) for k, v in self.aux.items()}, {k: pick(v) for k, v in self.slices.items()})


@dataclass
class Predictions:
    """A task's predictions on a split, column by column, in the order of its features."""

    ids: list[str]
    values: Any  # what the kind decoded: class indices, scores on the task's range, per word a tag index or None
    probs: Any  # what the kind keeps beside: class probabilities, per word the chosen tag's probability, or None

    def subset(self, keep: list[int]) -> "Predictions":
        def pick(xs):
            if xs is None:
                return None
            return [xs[i] for i in keep] if isinstance(xs, list) else xs[keep]

        return Predictions([self.ids[i] for i in keep], pick(self.values), pick(self.probs))


@dataclass(frozen=True)
class Prediction:
    """One input's answer from one task: a label and its class probabilities, a score on the task's range,
    or the words with their tags (and each chosen tag's probability); the fields a kind does not use are None."""

    task: str
    label: Optional[Union[str, list[str]]] = None
    score: Optional[float] = None
    probs: Optional[Union[dict[str, float], list[Optional[float]]]] = None
    tokens: Optional[list[str]] = None
    tags: Optional[list[Optional[str]]] = None

    def to_json(self) -> dict:
        """The answer as the server gives it: the fields this task's kind fills."""
        if self.tokens is not None:  # a word-level answer keeps its nulls (words beyond the length limit)
            return {"tokens": self.tokens, "tags": self.tags, "probs": self.probs}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "task" and getattr(self, f.name) is not None}
