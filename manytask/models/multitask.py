"""Shared trunk + per-task branches + heads: the one model behind BAM, MeTaL and flexible serving.

A task owns a head and an optional branch: copies of the encoder's top k layers that start at split depth
L - k. The trunk (embeddings and layers) is shared. With k = 0 for every task this is the plain shared-encoder
multi-task model; with a frozen trunk and k >= 1 it is the flexible model of Wei et al. The model knows nothing
about training: it returns a ``TaskOutput`` per task, whose extras (auxiliary token logits, slice heads, the
slice-based-learning parts) are named fields, filled when ``extras=True``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from manytask.encoders import adapter_for
from manytask.errors import ConfigError
from manytask.kinds import get_kind, kind_of
from manytask.models.heads import POOLERS, SBLHead
from manytask.tasks import TaskSpec


@dataclass
class SBLOutput:
    indicator: torch.Tensor  # [batch, slices]: membership logits, slot 0 the base slice
    experts: torch.Tensor  # [batch, slices, ...]: each expert's logits


@dataclass
class TaskOutput:
    """One task's output: its logits, and (training) the extras its objectives read, each in its own field."""

    logits: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # auxiliary label set -> token logits
    slices: dict[str, torch.Tensor] = field(default_factory=dict)  # slice -> its head's logits
    sbl: Optional[SBLOutput] = None


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        encoder: PreTrainedModel,
        tasks: list[TaskSpec],
        branch_layers: Optional[dict[str, int]] = None,
        pooling: str = "cls",
        dropout: float = 0.1,
        split_depth: Optional[dict[str, int]] = None,
    ):
        super().__init__()
        self.adapter = adapter_for(encoder)  # not a module: the encoder's own modules are registered once
        if pooling == "pooler":
            if self.adapter.pooler is None:
                raise ValueError("pooling 'pooler' needs the encoder's pooler (its pretrained weights, loaded with it)")
        elif pooling not in POOLERS:
            raise ValueError(f"unknown pooling {pooling!r} (known: {', '.join(POOLERS)}, pooler)")
        self.encoder = encoder
        self.config = encoder.config
        self.num_layers: int = self.adapter.num_layers
        self.hidden_size: int = self.adapter.hidden_size
        self.pooling = pooling
        self.specs = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict({t.name: kind_of(t).make_head(self.hidden_size, t.num_outputs, dropout)
                                    for t in tasks})
        self.branches = nn.ModuleDict()
        self.aux_heads = nn.ModuleDict()  # task -> {label set: training-only token head on the task's branch}
        self.slice_heads = nn.ModuleDict()  # task -> {slice: training-only head learnt on the slice's members}
        self.split_depth: dict[str, int] = {}
        for t in tasks:
            k = (branch_layers or {}).get(t.name, 0)
            self.add_branch(t.name, k, (split_depth or {}).get(t.name, self.num_layers - k))

    def add_branch(self, task: str, layers: int, split: int, fresh: bool = False) -> None:
        """Give ``task`` copies of encoder layers split..split+layers-1, run on the trunk's output at ``split``.

        A compressed branch has fewer layers than L - split: it starts from the same frozen trunk output and
        keeps the teacher branch's bottom layers. ``fresh`` builds new layers of the same class from the config
        instead (their weights are loaded next: a package attached to a trunk whose layers were quantised must
        not inherit the quantised modules).
        """
        if not 0 <= layers <= self.num_layers or not 0 <= split <= self.num_layers - layers:
            raise ConfigError(f"task {task!r}: branch of {layers} layers from split depth {split} "
                             f"does not fit a {self.num_layers}-layer encoder")
        self.split_depth[task] = split
        if task in self.branches:
            del self.branches[task]
        if layers:
            if fresh:
                self.branches[task] = nn.ModuleList(self.adapter.new_layer(split + i) for i in range(layers))
            else:
                source = self.adapter.layers[split: split + layers]
                self.branches[task] = nn.ModuleList(copy.deepcopy(layer) for layer in source)

    def add_aux(self, task: str, name: str, num_labels: int, dropout: float = 0.1) -> None:
        """A token head for silver labels over ``task``'s text, on the task's own branch output. It is trained
        with the task and never exported to bundles or served."""
        if task not in self.aux_heads:
            self.aux_heads[task] = nn.ModuleDict()
        self.aux_heads[task][name] = get_kind("tagging").make_head(self.hidden_size, num_labels, dropout)

    def add_slice_head(self, task: str, name: str, dropout: float = 0.1) -> None:
        """MeTaL's slice head: like the task's head, learnt only on the slice's members (training only)."""
        spec = self.specs[task]
        if task not in self.slice_heads:
            self.slice_heads[task] = nn.ModuleDict()
        self.slice_heads[task][name] = kind_of(spec).make_head(self.hidden_size, spec.num_outputs, dropout)

    def use_sbl_head(self, task: str, slices: int, dropout: float = 0.1) -> None:
        """Slice-based learning: the task's head becomes indicators + experts + attention (``SBLHead``)."""
        spec = self.specs[task]
        self.heads[task] = SBLHead(self.hidden_size, spec.num_outputs, dropout, slices, spec.kind)

    def head_type(self, task: str) -> str:
        """What a bundle records beside a task's weights, so a reader never guesses the head from their names."""
        head = self.heads[task]
        return getattr(head, "head_name", None) or kind_of(self.specs[task]).head_name

    def share(self, tasks: Iterable[str]) -> "MultiTaskModel":
        """A new model over the same trunk and the same task modules (no copies): a serving snapshot."""
        view = MultiTaskModel(self.encoder, [], pooling=self.pooling)
        for n in tasks:
            view.specs[n] = self.specs[n]
            view.heads[n] = self.heads[n]
            view.split_depth[n] = self.split_depth[n]
            if n in self.branches:
                view.branches[n] = self.branches[n]
        return view.train(self.training)

    def branch_size(self, task: str) -> int:
        return len(self.branches[task]) if task in self.branches else 0

    def layers_run(self, tasks: Optional[Iterable[str]] = None) -> int:
        """Transformer layers one input goes through for these tasks: the shared trunk once, then each branch."""
        names = list(tasks) if tasks is not None else self.task_names
        return max(self.split_depth[n] for n in names) + sum(self.branch_size(n) for n in names)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def freeze_trunk(self) -> None:
        """Freeze embeddings and shared layers; only branches and heads learn."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def layer_depth(self, param_name: str) -> int:
        """0 for embeddings, i + 1 for encoder layer i (or a branch copy of it), L + 1 for heads."""
        if param_name.startswith("encoder."):
            depth = self.adapter.depth(param_name[len("encoder."):])
            return self.num_layers + 1 if depth is None else depth
        if param_name.startswith("branches."):
            task, pos = param_name.split(".")[1:3]
            return self.split_depth[task] + int(pos) + 1
        return self.num_layers + 1

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "pooler":
            return self.adapter.pooler(hidden)
        return POOLERS[self.pooling](hidden, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        tasks: Optional[Iterable[str]] = None,
        rows: Optional[dict[str, torch.Tensor]] = None,
        extras: bool = False,
    ) -> dict[str, TaskOutput]:
        """A ``TaskOutput`` per task. The trunk runs once, only as deep as the tasks asked for need.

        ``rows`` (task -> row indices) runs a task's branch and head on those rows only: a batch that mixes
        tasks goes through the trunk once, and each example through its own task. ``extras`` also runs the
        training-only heads (auxiliary label sets, slice heads) and the slice-based-learning parts.
        """
        names = list(tasks) if tasks is not None else self.task_names
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown} (model has: {', '.join(self.task_names)})")
        adapter = self.adapter
        hidden = adapter.embed(input_ids, token_type_ids, attention_mask)
        context = adapter.context(hidden, attention_mask)
        needed = {self.split_depth[n] for n in names}
        states = {0: hidden} if 0 in needed else {}
        for i in range(max(needed)):
            hidden = adapter.run_layer(adapter.layers[i], hidden, context)
            if i + 1 in needed:
                states[i + 1] = hidden
        out = {}
        for n in names:
            h, c, am = states[self.split_depth[n]], context, attention_mask
            if rows is not None and n in rows:
                r = rows[n]
                h, am, c = h[r], attention_mask[r], adapter.select(context, r)
            for layer in self.branches[n] if n in self.branches else ():
                h = adapter.run_layer(layer, h, c)
            h = adapter.final(h)
            head = self.heads[n]
            pooled = self._pool(h, am) if head.pools else None
            sbl = None
            if extras and isinstance(head, SBLHead):
                logits, indicator, experts = head.parts(pooled)
                sbl = SBLOutput(indicator, experts)
            else:
                logits = head(pooled) if head.pools else head(h)
            result = TaskOutput(logits, sbl=sbl)
            if extras:
                for name, aux_head in (self.aux_heads[n].items() if n in self.aux_heads else ()):
                    result.aux[name] = aux_head(h)
                for name, slice_head in (self.slice_heads[n].items() if n in self.slice_heads else ()):
                    result.slices[name] = slice_head(pooled if pooled is not None else self._pool(h, am))
            out[n] = result
        return out


def compile_layers(model: MultiTaskModel) -> None:
    """``torch.compile`` each encoder layer in place (trunk and branches; the weights' names do not change), with
    dynamic shapes: length-grouped batches and requests vary in length, and one graph serves every layer of a
    family. Training (``train.compile``) and serving (``serve --compile``) take it."""
    for layer in [*model.adapter.layers, *(l for b in model.branches.values() for l in b)]:
        layer.compile(dynamic=True)
