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


def collate(features: Features, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """A padded batch: as long as its longest member, not as long as max_length."""
    width = max(len(features.input_ids[i]) for i in indices)
    n = len(indices)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    token_type = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, i in enumerate(indices):
        ids = features.input_ids[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type[row, : len(ids)] = torch.tensor(features.token_type_ids[i])
        mask[row, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type}
    if features.labels is not None:
        batch["labels"] = torch.tensor([features.labels[i] for i in indices])
    return batch
