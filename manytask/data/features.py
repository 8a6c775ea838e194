"""Tokenise examples once, and pad each batch only to its own longest sequence."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from manytask.kinds import kind_of
from manytask.records import IGNORE, Example, Features
from manytask.tasks import TaskSpec


def segment_ids(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does the tokenizer give segment (token type) ids? Only where it declares them: RoBERTa's and ModernBERT's
    do not, and their encoders know one segment type (a second one would index past their table)."""
    return "token_type_ids" in tokenizer.model_input_names


def _types(enc) -> list[list[int]]:
    return enc["token_type_ids"] if "token_type_ids" in enc else [[0] * len(ids) for ids in enc["input_ids"]]


def encode_words(words: Sequence[Sequence[str]], tokenizer: PreTrainedTokenizerBase, max_length: int):
    """Tokenise pre-split words; returns the encoding and, per example, each word's first-piece position."""
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length,
                    return_token_type_ids=segment_ids(tokenizer))
    firsts = []
    for i, row in enumerate(words):
        first = [-1] * len(row)
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and first[w] < 0:
                first[w] = pos
        firsts.append(first)
    return enc, firsts


def _encode_words(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
    """Word-level examples: each word's label sits on its first piece (IGNORE on the others)."""
    enc, firsts = encode_words([e.words or [] for e in examples], tokenizer, max_length)
    labels = None
    if examples and all(e.label is not None for e in examples):
        labels = []
        for e, first, ids in zip(examples, firsts, enc["input_ids"]):
            row = [IGNORE] * len(ids)
            for w, pos in enumerate(first):
                if pos >= 0:
                    row[pos] = e.label[w]  # type: ignore[index]
            labels.append(row)
    word_labels = [list(e.label) for e in examples] if labels is not None else None  # type: ignore[arg-type]
    return Features([e.id for e in examples], enc["input_ids"], _types(enc), labels, firsts, word_labels)


def encode(examples: Sequence[Example], spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
    kind = kind_of(spec)
    if kind.word_level:
        return _encode_words(examples, tokenizer, max_length)
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if spec.pair else None
    enc = tokenizer(texts_a, texts_b, truncation="longest_first" if texts_b else True, max_length=max_length,
                    return_token_type_ids=segment_ids(tokenizer))
    labels = None
    if examples and all(e.label is not None for e in examples):
        labels = [kind.target(spec, e.label) for e in examples]
    return Features([e.id for e in examples], enc["input_ids"], _types(enc), labels)


def targets_of(spec: TaskSpec, examples: Sequence[Example]) -> Features:
    """Features with the training targets of ``examples`` and no tokens: gold labels to score predictions against."""
    kind = kind_of(spec)
    labels = [kind.target(spec, e.label) for e in examples]
    word_labels = [list(e.label) for e in examples] if kind.word_level else None  # type: ignore[arg-type]
    return Features([e.id for e in examples], [], [], labels, None, word_labels)


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    token_type = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, (ids, types) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type[row, : len(ids)] = torch.tensor(types)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type}


def _token_rows(rows: list[list[int]], indices: Sequence[int], width: int) -> torch.Tensor:
    out = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(indices):
        out[row, : len(rows[i])] = torch.tensor(rows[i])
    return out


def _labels(features: Features, indices: Sequence[int], width: int) -> torch.Tensor:
    if features.first_piece is None:
        return torch.tensor([features.labels[i] for i in indices])  # type: ignore[index]
    return _token_rows(features.labels, indices, width)  # type: ignore[arg-type]


def pad_inputs(features: Features, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The padded model inputs of some examples: as long as the longest of them, not as long as max_length."""
    return _pad([(features.input_ids[i], features.token_type_ids[i]) for i in indices], pad_id)


@dataclass
class TaskBatch:
    """One task's part of a step's batch: its rows of the padded inputs (None: all of them), the positions of
    its examples in the task's training features, their targets, auxiliary token labels and slice membership."""

    rows: Optional[torch.Tensor]
    index: torch.Tensor
    labels: Optional[torch.Tensor] = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    slices: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device) -> "TaskBatch":
        def move(t):
            return t.to(device, non_blocking=True)

        return replace(self, rows=None if self.rows is None else move(self.rows), index=move(self.index),
                       labels=None if self.labels is None else move(self.labels),
                       aux={k: move(v) for k, v in self.aux.items()}, slices={k: move(v) for k, v in self.slices.items()})


def collate(parts: dict[str, tuple[Features, Sequence[int]]], pad_id: int) -> tuple[dict, dict[str, TaskBatch]]:
    """One padded batch over one or several tasks' examples, and per task its ``TaskBatch``.

    Task t's examples occupy a contiguous block of rows, in the order of ``parts``. A batch of one task keeps
    ``rows=None``: its task runs on the whole batch.
    """
    rows, per_task, start = [], {}, 0
    for task, (features, indices) in parts.items():
        rows.extend((features.input_ids[i], features.token_type_ids[i]) for i in indices)
        block = None if len(parts) == 1 else torch.arange(start, start + len(indices))
        per_task[task] = TaskBatch(block, torch.tensor(list(indices), dtype=torch.long))
        start += len(indices)
    inputs = _pad(rows, pad_id)
    width = inputs["input_ids"].shape[1]
    for task, (features, indices) in parts.items():
        b = per_task[task]
        if features.labels is not None:
            b.labels = _labels(features, indices, width)
        b.aux = {name: _token_rows(r, indices, width) for name, r in features.aux.items()}
        b.slices = {name: torch.tensor([m[i] for i in indices], dtype=torch.bool) for name, m in features.slices.items()}
    return inputs, per_task
