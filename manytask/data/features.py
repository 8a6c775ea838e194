"""Tokenise examples once, and pad each batch only to its own longest sequence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from manytask.data.readers import Example
from manytask.tasks import TaskSpec


IGNORE = -100  # token label the loss skips: later pieces of a word, special tokens, padding


@dataclass
class Features:
    """Token ids of one task split, aligned with its examples (same order, same ids).

    Tagging tasks also keep, per example, the position of each word's first piece (-1 for a word the
    model never sees: cut off by the length limit, or without any piece) and the gold tag per word.
    """

    ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: Optional[list]  # class index, regression target scaled to [0, 1], or per-token tags (tagging)
    first_piece: Optional[list[list[int]]] = None
    word_labels: Optional[list[list[int]]] = None
    aux: dict[str, list[list[int]]] = field(default_factory=dict)  # auxiliary label set -> token labels
    slices: dict[str, list[bool]] = field(default_factory=dict)  # slice -> member or not, per example

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

    @property
    def unseen_words(self) -> int:
        """Words with no piece in the model's input (scored as wrong)."""
        return sum(p < 0 for row in (self.first_piece or []) for p in row)


def encode_words(words: Sequence[Sequence[str]], tokenizer: PreTrainedTokenizerBase, max_length: int):
    """Tokenise pre-split words; returns the encoding and, per example, each word's first-piece position."""
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length,
                    return_token_type_ids=True)
    firsts = []
    for i, row in enumerate(words):
        first = [-1] * len(row)
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and first[w] < 0:
                first[w] = pos
        firsts.append(first)
    return enc, firsts


def _encode_tagging(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
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
    return Features([e.id for e in examples], enc["input_ids"], enc["token_type_ids"], labels, firsts, word_labels)


def encode(examples: Sequence[Example], spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
    if spec.kind == "tagging":
        return _encode_tagging(examples, tokenizer, max_length)
    texts_a = [e.text_a for e in examples]
    texts_b = [e.text_b for e in examples] if spec.text_fields and len(spec.text_fields) == 2 else None
    enc = tokenizer(texts_a, texts_b, truncation="longest_first" if texts_b else True, max_length=max_length,
                    return_token_type_ids=True)
    labels = None
    if examples and all(e.label is not None for e in examples):
        labels = [float(e.label) if spec.kind == "classification" else spec.scale(float(e.label)) for e in examples]
    return Features([e.id for e in examples], enc["input_ids"], enc["token_type_ids"], labels)


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


def _add_aux(batch: dict, features: Features, indices: Sequence[int], width: int) -> None:
    for name, rows in features.aux.items():
        batch[f"aux/{name}"] = _token_rows(rows, indices, width)
    for name, members in features.slices.items():
        batch[f"slice/{name}"] = torch.tensor([members[i] for i in indices], dtype=torch.bool)


def collate(features: Features, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """A padded batch: as long as its longest member, not as long as max_length."""
    batch = _pad([(features.input_ids[i], features.token_type_ids[i]) for i in indices], pad_id)
    if features.labels is not None:
        batch["labels"] = _labels(features, indices, batch["input_ids"].shape[1])
    _add_aux(batch, features, indices, batch["input_ids"].shape[1])
    return batch


def collate_mixed(parts: dict[str, tuple[Features, Sequence[int]]], pad_id: int) -> tuple[dict, dict[str, dict]]:
    """One padded batch over several tasks' examples, and per task its rows, labels and example indices.

    Task t's examples occupy a contiguous block of rows, in the order of ``parts``.
    """
    rows, per_task, start = [], {}, 0
    for task, (features, indices) in parts.items():
        rows.extend((features.input_ids[i], features.token_type_ids[i]) for i in indices)
        per_task[task] = {"rows": torch.arange(start, start + len(indices)), "index": torch.tensor(list(indices))}
        start += len(indices)
    inputs = _pad(rows, pad_id)
    for task, (features, indices) in parts.items():
        if features.labels is not None:
            per_task[task]["labels"] = _labels(features, indices, inputs["input_ids"].shape[1])
        _add_aux(per_task[task], features, indices, inputs["input_ids"].shape[1])
    return inputs, per_task
