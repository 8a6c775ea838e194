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
        split_depth: Optional[dict[str, int]] = None,
    ):
        super().__init__()
        if not (hasattr(encoder, "embeddings") and hasattr(encoder, "encoder") and hasattr(encoder.encoder, "layer")):
            raise TypeError(f"{type(encoder).__name__} is not a BERT-family encoder (embeddings + encoder.layer)")
        if pooling == "pooler":
            if getattr(encoder, "pooler", None) is None:
                raise ValueError("pooling 'pooler' needs the encoder's pooler (load it with add_pooling_layer=True)")
        elif pooling not in POOLERS:
            raise ValueError(f"unknown pooling {pooling!r} (known: {', '.join(POOLERS)}, pooler)")
        self.encoder = encoder
        self.config = encoder.config
        self.num_layers: int = encoder.config.num_hidden_layers
        self.hidden_size: int = encoder.config.hidden_size
        self.pooling = pooling
        self.specs = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict({t.name: make_head(t.kind, self.hidden_size, t.num_outputs, dropout) for t in tasks})
        self.branches = nn.ModuleDict()
        self.aux_heads = nn.ModuleDict()  # "<task>__<aux>": training-only token heads on the task's branch output
        self.slice_heads = nn.ModuleDict()  # "<task>__<slice>": training-only heads learnt on a slice's members
        self.split_depth: dict[str, int] = {}
        for t in tasks:
            k = (branch_layers or {}).get(t.name, 0)
            self.add_branch(t.name, k, (split_depth or {}).get(t.name, self.num_layers - k))

    def add_branch(self, task: str, layers: int, split: int, fresh: bool = False) -> None:
        """Give ``task`` copies of encoder layers split..split+layers-1, run on the trunk's output at ``split``.

        A compressed branch has fewer layers than L - split: it starts from the same frozen
        trunk output and keeps the teacher branch's bottom layers. ``fresh`` builds new layers of the
        same class from the config instead (their weights are loaded next: a package attached to a
        trunk whose layers were quantised must not inherit the quantised modules).
        """
        if not 0 <= layers <= self.num_layers or not 0 <= split <= self.num_layers - layers:
            raise ValueError(f"task {task!r}: branch of {layers} layers from split depth {split} "
                             f"does not fit a {self.num_layers}-layer encoder")
        self.split_depth[task] = split
        if task in self.branches:
            del self.branches[task]
        if layers:
            source = self.encoder.encoder.layer[split: split + layers]
            if fresh:
                self.branches[task] = nn.ModuleList(type(layer)(self.config, layer_idx=split + i)
                                                    for i, layer in enumerate(source))
            else:
                self.branches[task] = nn.ModuleList(copy.deepcopy(layer) for layer in source)

    def add_aux(self, task: str, name: str, num_labels: int, dropout: float = 0.1) -> None:
        """A token head for silver labels over ``task``'s text, on the task's own branch output. It is
        trained with the task and never exported to bundles or served."""
        self.aux_heads[f"{task}__{name}"] = make_head("tagging", self.hidden_size, num_labels, dropout)

    def add_slice_head(self, task: str, name: str, dropout: float = 0.1) -> None:
        """MeTaL's slice head: like the task's head, learnt only on the slice's members (training only)."""
        spec = self.specs[task]
        self.slice_heads[f"{task}__{name}"] = make_head(spec.kind, self.hidden_size, spec.num_outputs, dropout)

    def use_sbl_head(self, task: str, slices: int, dropout: float = 0.1) -> None:
        """Slice-based learning: the task's head becomes indicators + experts + attention (see models/slicing)."""
        from manytask.models.slicing import SBLHead

        spec = self.specs[task]
        self.heads[task] = SBLHead(self.hidden_size, spec.num_outputs, dropout, slices, spec.kind)

    def slice_heads_of(self, task: str) -> list[tuple[str, nn.Module]]:
        prefix = f"{task}__"
        return [(k[len(prefix):], m) for k, m in self.slice_heads.items() if k.startswith(prefix)]

    def aux_of(self, task: str) -> list[tuple[str, nn.Module]]:
        prefix = f"{task}__"
        return [(k[len(prefix):], m) for k, m in self.aux_heads.items() if k.startswith(prefix)]

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
        rows: Optional[dict[str, torch.Tensor]] = None,
        aux: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Logits per task. The trunk runs once, only as deep as the tasks asked for need.

        ``rows`` (task -> row indices) runs a task's branch and head on those rows only: a batch
        that mixes tasks goes through the trunk once, and each example through its own task.
        ``aux`` adds the auxiliary heads' token logits as ``"<task>/<aux>"``.
        """
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
        pool = (lambda h, _mask: self.encoder.pooler(h)) if self.pooling == "pooler" else POOLERS[self.pooling]
        out = {}
        for n in names:
            h, m, am = states[self.split_depth[n]], mask, attention_mask
            if rows is not None and n in rows:
                r = rows[n]
                h, am = h[r], attention_mask[r]
                m = mask[r] if isinstance(mask, torch.Tensor) else mask
            if n in self.branches:
                for layer in self.branches[n]:
                    h = layer(h, m)
            head = self.heads[n]
            pooled = pool(h, am) if head.pools else None
            if aux and hasattr(head, "parts"):
                out[n], out[f"{n}/sbl-indicator"], out[f"{n}/sbl-experts"] = head.parts(pooled)
            else:
                out[n] = head(pooled) if head.pools else head(h)
            if aux:
                for name, aux_head in self.aux_of(n):
                    out[f"{n}/{name}"] = aux_head(h)
                for name, slice_head in self.slice_heads_of(n):
                    out[f"{n}#{name}"] = slice_head(pooled if pooled is not None else pool(h, am))
        return out
