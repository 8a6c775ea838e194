"""Shared trunk + per-task branches + heads: the one model behind BAM, MeTaL and flexible serving.

A task owns a head and an optional branch: copies of the encoder's top k layers that start
at split depth L - k. The trunk (embeddings and layers) is shared. With k = 0 for every
task this is the plain shared-encoder multi-task model; with a frozen trunk and k >= 1 it is
the flexible model of Wei et al. The model knows nothing about training.
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from manytask.models.heads import POOLERS, make_head
from manytask.tasks import TaskSpec


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        encoder: PreTrainedModel,
        tasks: list[TaskSpec],
        branch_layers: Optional[dict[str, int]] = None,
        pooling: str = "cls",
        dropout: float = 0.1,
    ):
        super().__init__()
        if not (hasattr(encoder, "embeddings") and hasattr(encoder, "encoder") and hasattr(encoder.encoder, "layer")):
            raise TypeError(f"{type(encoder).__name__} is not a BERT-family encoder (embeddings + encoder.layer)")
        if pooling not in POOLERS:
            raise ValueError(f"unknown pooling {pooling!r} (known: {', '.join(POOLERS)})")
        self.encoder = encoder
        self.config = encoder.config
        self.num_layers: int = encoder.config.num_hidden_layers
        self.hidden_size: int = encoder.config.hidden_size
        self.pooling = pooling
        self.specs = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict({t.name: make_head(t.kind, self.hidden_size, t.num_outputs, dropout) for t in tasks})
        self.branches = nn.ModuleDict()
        self.split_depth: dict[str, int] = {}
        for t in tasks:
            k = (branch_layers or {}).get(t.name, 0)
            if not 0 <= k <= self.num_layers:
                raise ValueError(f"task {t.name!r}: branch_layers {k} outside 0..{self.num_layers}")
            self.split_depth[t.name] = self.num_layers - k
            if k:
                layers = self.encoder.encoder.layer[self.num_layers - k:]
                self.branches[t.name] = nn.ModuleList(copy.deepcopy(layer) for layer in layers)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def trunk_parameters(self) -> Iterable[nn.Parameter]:
        return self.encoder.parameters()

    def freeze_trunk(self) -> None:
        """Freeze embeddings and shared layers; only branches and heads learn."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def layer_depth(self, param_name: str) -> int:
        """0 for embeddings, i + 1 for encoder layer i (or a branch copy of it), L + 1 for heads."""
        if param_name.startswith("encoder.embeddings."):
            return 0
        if param_name.startswith("encoder.encoder.layer."):
            return int(param_name.split(".")[3]) + 1
        if param_name.startswith("branches."):
            task, pos = param_name.split(".")[1:3]
            return self.split_depth[task] + int(pos) + 1
        return self.num_layers + 1

    def _mask(self, embeddings: torch.Tensor, attention_mask: torch.Tensor):
        return create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        tasks: Optional[Iterable[str]] = None,
    ) -> dict[str, torch.Tensor]:
        """Logits per task. The trunk runs once, only as deep as the tasks asked for need."""
        names = list(tasks) if tasks is not None else self.task_names
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown} (model has: {', '.join(self.task_names)})")
        hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = self._mask(hidden, attention_mask)
        needed = {self.split_depth[n] for n in names}
        states = {0: hidden} if 0 in needed else {}
        for i in range(max(needed)):
            hidden = self.encoder.encoder.layer[i](hidden, mask)
            if i + 1 in needed:
                states[i + 1] = hidden
        pool = POOLERS[self.pooling]
        out = {}
        for n in names:
            h = states[self.split_depth[n]]
            if n in self.branches:
                for layer in self.branches[n]:
                    h = layer(h, mask)
            out[n] = self.heads[n](pool(h, attention_mask))
        return out
