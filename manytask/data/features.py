"""Tokenise examples once, and pad each batch only to its own longest sequence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from manytask.data.readers import Example
from manytask.tasks import TaskSpec


@dataclass
class Features:
    """Token ids of one task split, aligned with its examples (same order, same ids)."""

    ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: Optional[list[float]]  # class index, or regression target scaled to [0, 1]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode(examples: Sequence[Example], spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
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


def collate(features: Features, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """A padded batch: as long as its longest member, not as long as max_length."""
    batch = _pad([(features.input_ids[i], features.token_type_ids[i]) for i in indices], pad_id)
    if features.labels is not None:
        batch["labels"] = torch.tensor([features.labels[i] for i in indices])
    return batch


def collate_mixed(parts: dict[str, tuple[Features, Sequence[int]]], pad_id: int) -> tuple[dict, dict[str, dict]]:
    """One padded batch over several tasks' examples, and per task its rows, labels and example indices.

    Task t's examples occupy a contiguous block of rows, in the order of ``parts``.
    """
    rows, per_task, start = [], {}, 0
    for task, (features, indices) in parts.items():
        rows.extend((features.input_ids[i], features.token_type_ids[i]) for i in indices)
        sub = {"rows": torch.arange(start, start + len(indices)), "index": torch.tensor(list(indices))}
        if features.labels is not None:
            sub["labels"] = torch.tensor([features.labels[i] for i in indices])
        per_task[task] = sub
        start += len(indices)
    return _pad(rows, pad_id), per_task
